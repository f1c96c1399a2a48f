-- Assign the next seq of (user, topic), keep the update as history, publish it:
-- one atomic step.
--
-- ARGV[1] key prefix, ARGV[2] user id, ARGV[3] topic, ARGV[4] channel,
-- ARGV[5] payload head, ARGV[6] payload tail (payload = head..seq..tail),
-- ARGV[7] message head (message = head..seq.."\n"..payload),
-- ARGV[8] history length, ARGV[9] history lifetime in milliseconds.
-- Keys (under the prefix):
--   seq:<user>:<topic>   string  last seq assigned (1, 2, 3...)
--   hist:<user>:<topic>  stream  the last updates, entry id <seq>-0, field p = payload
--   published            hash    topic -> updates published, for /metrics
-- Because all of it runs as one script, updates of one (user, topic) reach
-- the channel and the history in seq order whatever the number of publishers.
-- Returns the seq.
local p, user, topic = ARGV[1], ARGV[2], ARGV[3]
local seq = redis.call('INCR', p .. ':seq:' .. user .. ':' .. topic)
local payload = ARGV[5] .. seq .. ARGV[6]
local history = p .. ':hist:' .. user .. ':' .. topic
redis.call('XADD', history, 'MAXLEN', ARGV[8], seq .. '-0', 'p', payload)
redis.call('PEXPIRE', history, ARGV[9])
redis.call('HINCRBY', p .. ':published', topic, 1)
redis.call('PUBLISH', ARGV[4], ARGV[7] .. seq .. '\n' .. payload)
return seq
