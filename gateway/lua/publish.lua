-- Assign the next seq of (user, topic) and publish the update, atomically.
--
-- ARGV[1] key prefix, ARGV[2] user id, ARGV[3] topic, ARGV[4] channel,
-- ARGV[5] message head, ARGV[6] message tail: the message is head..seq..tail.
-- Because both steps run as one script, updates of one (user, topic) reach
-- the channel in seq order whatever the number of publishers.
-- Returns the seq.
local p, user, topic = ARGV[1], ARGV[2], ARGV[3]
local seq = redis.call('INCR', p .. ':seq:' .. user .. ':' .. topic)
redis.call('PUBLISH', ARGV[4], ARGV[5] .. seq .. ARGV[6])
return seq
