-- Refuse every token of one user issued before a time, for good: a later call
-- may move the time later, never earlier (a revocation is never undone).
--
-- KEYS[1] revoked:<user> (string). ARGV[1] issued-before time (Unix seconds).
-- Returns the time now in force.
local now = tonumber(redis.call('GET', KEYS[1]))
local wanted = tonumber(ARGV[1])
if now == nil or wanted > now then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return tostring(now)
