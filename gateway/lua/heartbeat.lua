-- Renew one worker's lease, on Redis's clock so that hosts' clocks never matter.
--
-- KEYS[1] workers  sorted set  worker id -> lease end (ms since the epoch)
-- ARGV[1] worker id, ARGV[2] lease length in milliseconds.
-- Returns 1 when the lease is new: the worker's first beat, or Redis lost
-- it (a restart without data, a sweep after a long stall), and the caller
-- must re-assert its records; 0 when an existing lease was renewed.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
