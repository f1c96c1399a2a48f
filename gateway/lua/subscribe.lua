-- Add topics to one connection's subscriptions, atomically.
--
-- ARGV[1] key prefix, ARGV[2] worker id, ARGV[3] connection id,
-- ARGV[4] user id, ARGV[5..] topics.
-- Keys (all under the prefix):
--   worker:<worker>      hash  connection -> user     (what a sweep walks)
--   conn:<conn>          set   topics of the connection
--   subs:<user>:<topic>  set   connections holding (user, topic)
--   topic:<topic>        set   users with at least one connection on topic
--   user:<user>          set   topics with at least one connection
-- Returns the current seq of each topic, in ARGV order (0: never published).
local p, worker, conn, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('HSET', p .. ':worker:' .. worker, conn, user)
local seqs = {}
for i = 5, #ARGV do
  local topic = ARGV[i]
  redis.call('SADD', p .. ':conn:' .. conn, topic)
  redis.call('SADD', p .. ':subs:' .. user .. ':' .. topic, conn)
  redis.call('SADD', p .. ':topic:' .. topic, user)
  redis.call('SADD', p .. ':user:' .. user, topic)
  seqs[#seqs + 1] = tonumber(redis.call('GET', p .. ':seq:' .. user .. ':' .. topic) or '0')
end
return seqs
