-- Record one live connection of a user, unless the user already has too many, atomically.
--
-- ARGV[1] key prefix, ARGV[2] worker id, ARGV[3] connection id,
-- ARGV[4] user id, ARGV[5] most live connections per user (0: no limit),
-- ARGV[6] when the connection's token was issued (Unix seconds; empty: not known).
-- Keys (all under the prefix):
--   worker:<worker>  hash    connection -> user   (what a sweep walks)
--   conns:<user>     set     the user's live connections, on every worker
--   revoked:<user>   string  tokens of the user issued before this time are refused
-- Returns 1 when the connection is recorded (or was already), 0 when the
-- user is at the limit, -1 when its token is revoked: the connection must be
-- refused.
local p, worker, conn, user, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local revoked = tonumber(redis.call('GET', p .. ':revoked:' .. user))
if revoked and (ARGV[6] == '' or tonumber(ARGV[6]) < revoked) then
  return -1
end
local conns = p .. ':conns:' .. user
if limit > 0 and redis.call('SISMEMBER', conns, conn) == 0 and redis.call('SCARD', conns) >= limit then
  return 0
end
redis.call('SADD', conns, conn)
redis.call('HSET', p .. ':worker:' .. worker, conn, user)
return 1
