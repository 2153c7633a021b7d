-- Release plain (non-fair) locks still held by their tokens and wake their waiters: the lean
-- form of release.lua for locks that never queue, so a release touches only the lock and its
-- holder info. Never touches another owner's lock.
-- KEYS: per lock, 2 keys: lock, holder info
-- ARGV: per lock, 2 values: token, wake-up channel
-- Returns one 1 (released) or 0 (was not ours) per lock. The wake-up is empty: every waiter
-- retries (a fair waiter of the same name is served by its own script's queue rule).
-- pcall: a key of another type (a semaphore's name) answers "not ours" for that item instead
-- of failing every lock batched with it.
local results = {}
for i = 1, #ARGV / 2 do
  local lock, info = KEYS[2 * i - 1], KEYS[2 * i]
  local token, channel = ARGV[2 * i - 1], ARGV[2 * i]
  if redis.pcall('GET', lock) == token then
    redis.call('DEL', lock, info)
    -- pcall: a user without channel permissions (Redis 7 ACLs) still releases; its waiters
    -- then rely on their timed re-checks.
    redis.pcall('PUBLISH', channel, '')
    results[i] = 1
  else
    results[i] = 0
  end
end
return results
