-- Record one live connection of a user, unless the user already has too many, atomically.
--
-- KEYS[1] conns:<user>     set     the user's live connections, on every worker
-- KEYS[2] revoked:<user>   string  tokens of the user issued before this time are refused
-- KEYS[3] worker:<worker>  hash    connection -> user   (what a sweep walks); not
--                                  given on Redis Cluster, where it lives in another
--                                  slot and the caller writes it first
-- ARGV[1] connection id, ARGV[2] user id, ARGV[3] most live connections per
-- user (0: no limit), ARGV[4] when the connection's token was issued (Unix
-- seconds; empty: not known).
-- Returns 1 when the connection is recorded (or was already), 0 when the
-- user is at the limit, -1 when its token is revoked: the connection must be
-- refused.
local conn, user, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local revoked = tonumber(redis.call('GET', KEYS[2]))
if revoked and (ARGV[4] == '' or tonumber(ARGV[4]) < revoked) then
  return -1
end
if limit > 0 and redis.call('SISMEMBER', KEYS[1], conn) == 0 and redis.call('SCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('SADD', KEYS[1], conn)
if KEYS[3] then
  redis.call('HSET', KEYS[3], conn, user)
end
return 1
