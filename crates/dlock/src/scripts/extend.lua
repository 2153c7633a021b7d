-- Extend leases that are still held by their tokens; never re-creates an expired key.
-- KEYS: per lease, 3 keys: lock, holder info, reentrant hold set (absent for plain locks)
-- ARGV: per lease, 2 values: token, ttl ms
-- Returns one 1 (extended) or 0 (not ours any more) per lease. The watchdog renews every lease
-- of a node in one call, so renewal costs one round trip per tick however many locks are held.
local results = {}
for i = 1, #ARGV / 2 do
  local lock = KEYS[3 * i - 2]
  local token, ttl = ARGV[2 * i - 1], ARGV[2 * i]
  if redis.call('GET', lock) == token then
    redis.call('PEXPIRE', lock, ttl)
    redis.call('PEXPIRE', KEYS[3 * i - 1], ttl)
    redis.call('PEXPIRE', KEYS[3 * i], ttl)
    results[i] = 1
  else
    results[i] = 0
  end
end
return results
