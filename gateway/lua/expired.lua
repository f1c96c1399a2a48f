-- List the workers whose lease has ended, on Redis's clock.
--
-- KEYS[1] workers (sorted set). Returns worker ids; removing their records is
-- the caller's job (one release script per connection, then the lease).
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms)
