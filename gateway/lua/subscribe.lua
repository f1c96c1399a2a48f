-- Add topics to one connection's subscriptions, atomically.
--
-- KEYS[1] conn:<conn>      set   topics of the connection
-- KEYS[2] user:<user>      set   topics with at least one connection
-- then for the i-th topic, KEYS[3i .. 3i + 2]:
--   subs:<user>:<topic>    set     connections holding (user, topic)
--   topic:<topic>          set     users with at least one connection on topic
--   seq:<user>:<topic>     string  the topic's last seq
-- and last, worker:<worker> (hash, connection -> user: what a sweep walks);
-- not given on Redis Cluster, where the caller writes it first.
-- ARGV[1] connection id, ARGV[2] user id, ARGV[3..] topics.
-- Returns the current seq of each topic, in ARGV order (0: never published).
local conn, user = ARGV[1], ARGV[2]
local topics = #ARGV - 2
if #KEYS > 2 + 3 * topics then
  redis.call('HSET', KEYS[#KEYS], conn, user)
end
local seqs = {}
for i = 1, topics do
  local topic, at = ARGV[i + 2], 3 * i
  redis.call('SADD', KEYS[1], topic)
  redis.call('SADD', KEYS[at], conn)
  redis.call('SADD', KEYS[at + 1], user)
  redis.call('SADD', KEYS[2], topic)
  seqs[#seqs + 1] = tonumber(redis.call('GET', KEYS[at + 2]) or '0')
end
return seqs
