-- Remove topics from one connection's subscriptions, or the whole connection, atomically.
--
-- KEYS[1] conn:<conn>      set   topics of the connection
-- KEYS[2] user:<user>      set   topics with at least one connection
-- KEYS[3] conns:<user>     set   the user's live connections
-- then for the i-th topic given, KEYS[2i + 2 .. 2i + 3]: subs:<user>:<topic>, topic:<topic>
-- and last, worker:<worker> (hash, connection -> user); not given on Redis
-- Cluster, where the caller removes the connection's entry after this.
-- ARGV[1] connection id, ARGV[2] user id, ARGV[3] "1" when the connection
-- ended (disconnect): every topic goes, and its records in conns:<user> and
-- worker:<worker>; "0": only the topics given. ARGV[4] the prefix of the
-- user's keys ("gw:" or "gw:{tag}:"), ARGV[5..] topics.
-- A topic the connection holds that was not given (the configured topics
-- changed since it subscribed) is removed with keys named from ARGV[4]: in
-- the user's slot like every other.
-- A (user, topic) leaves topic:<topic> and user:<user> only when its last
-- connection goes, so a user on two devices keeps the topic until both left.
-- Returns the topics actually removed.
local conn, user, ended, base = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local given = #ARGV - 4
local index = #KEYS > 3 + 2 * given and KEYS[#KEYS] or nil
if index and redis.call('HGET', index, conn) ~= user then
  return {}
end
local keys = {}
for i = 1, given do
  keys[ARGV[i + 4]] = {KEYS[2 * i + 2], KEYS[2 * i + 3]}
end
local topics = {}
if ended then
  topics = redis.call('SMEMBERS', KEYS[1])
else
  for i = 1, given do topics[#topics + 1] = ARGV[i + 4] end
end
local removed = {}
for _, topic in ipairs(topics) do
  if redis.call('SREM', KEYS[1], topic) == 1 then
    local named = keys[topic] or {base .. 'subs:' .. user .. ':' .. topic, base .. 'topic:' .. topic}
    redis.call('SREM', named[1], conn)
    if redis.call('SCARD', named[1]) == 0 then
      redis.call('SREM', named[2], user)
      redis.call('SREM', KEYS[2], topic)
    end
    removed[#removed + 1] = topic
  end
end
if ended then
  redis.call('SREM', KEYS[3], conn)
  if index then
    redis.call('HDEL', index, conn)
  end
end
return removed
