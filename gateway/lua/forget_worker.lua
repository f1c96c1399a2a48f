-- Remove a worker's lease once it holds no records, atomically.
--
-- KEYS[1] worker:<worker> (hash), KEYS[2] workers (sorted set); ARGV[1] worker
-- id. A worker that registered new connections meanwhile keeps its lease
-- (and is swept again later if dead). Returns 1 when the lease was removed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
return redis.call('ZREM', KEYS[2], ARGV[1])
