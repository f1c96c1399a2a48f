-- Assign the next seq of (user, topic), keep the update as history, publish it:
-- one atomic step.
--
-- KEYS[1] seq:<user>:<topic>   string  last seq assigned (1, 2, 3...)
-- KEYS[2] hist:<user>:<topic>  stream  the last updates, entry id <seq>-0, field p = payload
-- KEYS[3] published            hash    topic -> updates published, for /metrics
-- KEYS[4] u:<user>             on Redis Cluster only: the user's shard channel
--                              (SPUBLISH: heard on the nodes of the user's slot
--                              only, where PUBLISH would reach every node)
-- ARGV[1] topic, ARGV[2] payload head, ARGV[3] payload tail (payload =
-- head..seq..tail), ARGV[4] message head (message = head..seq.."\n"..payload),
-- ARGV[5] history length, ARGV[6] history lifetime in milliseconds, ARGV[7]
-- on a single Redis, the user's channel (a channel, not a key, to ACLs).
-- Because all of it runs as one script, updates of one (user, topic) reach
-- the channel and the history in seq order whatever the number of publishers.
-- Returns the seq.
local seq = redis.call('INCR', KEYS[1])
local payload = ARGV[2] .. seq .. ARGV[3]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], seq .. '-0', 'p', payload)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
local message = ARGV[4] .. seq .. '\n' .. payload
if KEYS[4] then
  redis.call('SPUBLISH', KEYS[4], message)
else
  redis.call('PUBLISH', ARGV[7], message)
end
return seq
