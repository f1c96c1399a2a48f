-- Remove topics from one connection's subscriptions, atomically.
--
-- ARGV[1] key prefix, ARGV[2] worker id, ARGV[3] connection id,
-- ARGV[4..] topics; none given: every topic of the connection (disconnect).
-- A (user, topic) leaves topic:<topic> and user:<user> only when its last
-- connection goes, so a user on two devices keeps the topic until both left.
-- When the connection holds nothing more, its keys are deleted.
-- Returns the topics actually removed.
local p, worker, conn = ARGV[1], ARGV[2], ARGV[3]
local worker_key, conn_key = p .. ':worker:' .. worker, p .. ':conn:' .. conn
local user = redis.call('HGET', worker_key, conn)
if not user then
  return {}
end
local topics = {}
if #ARGV > 3 then
  for i = 4, #ARGV do topics[#topics + 1] = ARGV[i] end
else
  topics = redis.call('SMEMBERS', conn_key)
end
local removed = {}
for _, topic in ipairs(topics) do
  if redis.call('SREM', conn_key, topic) == 1 then
    local subs = p .. ':subs:' .. user .. ':' .. topic
    redis.call('SREM', subs, conn)
    if redis.call('SCARD', subs) == 0 then
      redis.call('SREM', p .. ':topic:' .. topic, user)
      redis.call('SREM', p .. ':user:' .. user, topic)
    end
    removed[#removed + 1] = topic
  end
end
if redis.call('SCARD', conn_key) == 0 then
  redis.call('HDEL', worker_key, conn)
end
return removed
