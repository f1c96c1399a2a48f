-- Remove topics from one connection's subscriptions, or the whole connection, atomically.
--
-- KEYS[1] worker:<worker>  hash  connection -> user
-- KEYS[2] conn:<conn>      set   topics of the connection
-- KEYS[3] user:<user>      set   topics with at least one connection
-- KEYS[4] conns:<user>     set   the user's live connections
-- then for the i-th topic, KEYS[2i + 3 .. 2i + 4]:
--   subs:<user>:<topic>, topic:<topic>
-- ARGV[1] connection id, ARGV[2] user id, ARGV[3] "1" when the connection
-- ended (disconnect): every topic goes, and its records in worker:<worker>
-- and conns:<user>; "0": only the topics given. ARGV[4] the prefix of the
-- user's keys ("gw:" or "gw:{tag}:"), ARGV[5..] topics.
-- A topic the connection holds that was not given (the configured topics
-- changed since it subscribed) is removed with keys named from ARGV[4]: in
-- the user's slot like every other.
-- A (user, topic) leaves topic:<topic> and user:<user> only when its last
-- connection goes, so a user on two devices keeps the topic until both left.
-- Returns the topics actually removed.
local conn, user, ended, base = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
if redis.call('HGET', KEYS[1], conn) ~= user then
  return {}
end
local keys = {}
for i = 5, #ARGV do
  keys[ARGV[i]] = {KEYS[2 * (i - 4) + 3], KEYS[2 * (i - 4) + 4]}
end
local topics = {}
if ended then
  topics = redis.call('SMEMBERS', KEYS[2])
else
  for i = 5, #ARGV do topics[#topics + 1] = ARGV[i] end
end
local removed = {}
for _, topic in ipairs(topics) do
  if redis.call('SREM', KEYS[2], topic) == 1 then
    local named = keys[topic] or {base .. 'subs:' .. user .. ':' .. topic, base .. 'topic:' .. topic}
    redis.call('SREM', named[1], conn)
    if redis.call('SCARD', named[1]) == 0 then
      redis.call('SREM', named[2], user)
      redis.call('SREM', KEYS[3], topic)
    end
    removed[#removed + 1] = topic
  end
end
if ended then
  redis.call('HDEL', KEYS[1], conn)
  redis.call('SREM', KEYS[4], conn)
end
return removed
