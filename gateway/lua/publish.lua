-- Assign the next seq of (user, topic), keep the update as history, publish it:
-- one atomic step.
--
-- KEYS[1] seq:<user>:<topic>   string  last seq assigned (1, 2, 3...)
-- KEYS[2] hist:<user>:<topic>  stream  the last updates, entry id <seq>-0, field p = payload
-- KEYS[3] published            hash    topic -> updates published, for /metrics
-- ARGV[1] topic, ARGV[2] channel, ARGV[3] payload head, ARGV[4] payload tail
-- (payload = head..seq..tail), ARGV[5] message head (message =
-- head..seq.."\n"..payload), ARGV[6] history length, ARGV[7] history
-- lifetime in milliseconds.
-- Because all of it runs as one script, updates of one (user, topic) reach
-- the channel and the history in seq order whatever the number of publishers.
-- Returns the seq.
local seq = redis.call('INCR', KEYS[1])
local payload = ARGV[3] .. seq .. ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], seq .. '-0', 'p', payload)
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('PUBLISH', ARGV[2], ARGV[5] .. seq .. '\n' .. payload)
return seq
