-- Release locks that are still held by their tokens; never touches another owner's lock.
-- KEYS: pairs of (lock, holder info); ARGV: one token per pair, in the same order.
-- Returns one 1 (released) or 0 (was not ours any more) per pair.
local results = {}
for i = 1, #ARGV do
  local lock, info = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('GET', lock) == ARGV[i] then
    redis.call('DEL', lock, info)
    results[i] = 1
  else
    results[i] = 0
  end
end
return results
