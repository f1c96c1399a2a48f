-- Add topics to one connection's subscriptions, atomically.
--
-- KEYS[1] worker:<worker>  hash  connection -> user     (what a sweep walks)
-- KEYS[2] conn:<conn>      set   topics of the connection
-- KEYS[3] user:<user>      set   topics with at least one connection
-- then for the i-th topic, KEYS[3i + 1 .. 3i + 3]:
--   subs:<user>:<topic>    set     connections holding (user, topic)
--   topic:<topic>          set     users with at least one connection on topic
--   seq:<user>:<topic>     string  the topic's last seq
-- ARGV[1] connection id, ARGV[2] user id, ARGV[3..] topics.
-- Returns the current seq of each topic, in ARGV order (0: never published).
local conn, user = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[1], conn, user)
local seqs = {}
for i = 3, #ARGV do
  local topic, at = ARGV[i], 3 * (i - 2)
  redis.call('SADD', KEYS[2], topic)
  redis.call('SADD', KEYS[at + 1], conn)
  redis.call('SADD', KEYS[at + 2], user)
  redis.call('SADD', KEYS[3], topic)
  seqs[#seqs + 1] = tonumber(redis.call('GET', KEYS[at + 3]) or '0')
end
return seqs
