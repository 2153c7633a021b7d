-- Extend plain locks that are still held by their tokens; never re-creates an expired key. The
-- lean form of extend.lua for locks without reentrant holds.
-- KEYS: per lease, 2 keys: lock, holder info
-- ARGV: per lease, 2 values: token, ttl ms
-- Returns one 1 (extended) or 0 (not ours any more) per lease.
-- pcall: a key of another type answers "not ours" for that item instead of failing every
-- lease batched with it.
local results = {}
for i = 1, #ARGV / 2 do
  local lock, token, ttl = KEYS[2 * i - 1], ARGV[2 * i - 1], ARGV[2 * i]
  if redis.pcall('GET', lock) == token then
    redis.call('PEXPIRE', lock, ttl)
    redis.call('PEXPIRE', KEYS[2 * i], ttl)
    results[i] = 1
  else
    results[i] = 0
  end
end
return results
