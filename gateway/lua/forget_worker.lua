-- Remove a worker's lease once it holds no records, atomically.
--
-- ARGV[1] key prefix, ARGV[2] worker id. A worker that registered new
-- connections meanwhile keeps its lease (and is swept again later if dead).
-- Returns 1 when the lease was removed.
local p, worker = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. ':worker:' .. worker) == 1 then
  return 0
end
return redis.call('ZREM', p .. ':workers', worker)
