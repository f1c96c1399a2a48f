-- Refuse every token of one user issued before a time, for good: a later call
-- may move the time later, never earlier (a revocation is never undone).
--
-- ARGV[1] key prefix, ARGV[2] user id, ARGV[3] issued-before time (Unix seconds).
-- Key: revoked:<user> (string). Returns the time now in force.
local key = ARGV[1] .. ':revoked:' .. ARGV[2]
local now = tonumber(redis.call('GET', key))
local wanted = tonumber(ARGV[3])
if now == nil or wanted > now then
  redis.call('SET', key, ARGV[3])
  return ARGV[3]
end
return tostring(now)
