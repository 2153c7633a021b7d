-- Extend leases that are still held by their tokens; never re-creates an expired key.
-- KEYS: per lease, 3 keys: lock, holder info, reentrant hold set (absent for plain locks)
-- ARGV: per lease, 3 values: token, ttl ms, and the grant's fencing token for a reentrant lease
--       ('' for a plain lock). A reentrant lock's key holds the owner's token, the same for
--       every grant to that owner: only the fencing token in the holder info tells a later
--       grant (after this one was lost) from this one.
-- Returns one 1 (extended) or 0 (not ours any more) per lease. The watchdog renews every lease
-- of a node in one call, so renewal costs one round trip per tick however many locks are held.
-- pcall: a key of another type (a semaphore's name reused for a lock, or the reverse) answers
-- "not ours" for that item instead of failing every lease batched with it.
local results = {}
for i = 1, #ARGV / 3 do
  local lock = KEYS[3 * i - 2]
  local token, ttl, fence = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  if redis.pcall('GET', lock) == token
     and (fence == '' or redis.call('HGET', KEYS[3 * i - 1], 'fence') == fence) then
    redis.call('PEXPIRE', lock, ttl)
    redis.call('PEXPIRE', KEYS[3 * i - 1], ttl)
    redis.call('PEXPIRE', KEYS[3 * i], ttl)
    results[i] = 1
  else
    results[i] = 0
  end
end
return results
