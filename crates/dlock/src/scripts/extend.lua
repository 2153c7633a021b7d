-- Extend leases that are still held by their tokens; never re-creates an expired key.
-- KEYS: pairs of (lock, holder info); ARGV: pairs of (token, ttl ms), in the same order.
-- Returns one 1 (extended) or 0 (not ours any more) per pair. The watchdog renews every lease
-- of a node in one call, so renewal costs one round trip per tick however many locks are held.
local results = {}
for i = 1, #KEYS / 2 do
  local lock, info = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('GET', lock) == ARGV[2 * i - 1] then
    redis.call('PEXPIRE', lock, ARGV[2 * i])
    redis.call('PEXPIRE', info, ARGV[2 * i])
    results[i] = 1
  else
    results[i] = 0
  end
end
return results
