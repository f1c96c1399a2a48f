-- Remove topics from one connection's subscriptions, or the whole connection, atomically.
--
-- ARGV[1] key prefix, ARGV[2] worker id, ARGV[3] connection id,
-- ARGV[4..] topics; none given: the connection ended (disconnect), and every
-- topic goes with it, its record in worker:<worker> and in conns:<user>.
-- A (user, topic) leaves topic:<topic> and user:<user> only when its last
-- connection goes, so a user on two devices keeps the topic until both left.
-- Returns the topics actually removed.
local p, worker, conn = ARGV[1], ARGV[2], ARGV[3]
local worker_key, conn_key = p .. ':worker:' .. worker, p .. ':conn:' .. conn
local user = redis.call('HGET', worker_key, conn)
if not user then
  return {}
end
local ended = #ARGV == 3
local topics = {}
if ended then
  topics = redis.call('SMEMBERS', conn_key)
else
  for i = 4, #ARGV do topics[#topics + 1] = ARGV[i] end
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
if ended then
  redis.call('HDEL', worker_key, conn)
  redis.call('SREM', p .. ':conns:' .. user, conn)
end
return removed
