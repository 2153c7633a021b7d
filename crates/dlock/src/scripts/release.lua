-- Release locks still held by their tokens and wake their waiters; never touches another
-- owner's lock. Also withdraws each token from the lock's fair-mode wait queue, so the same
-- script cleans up after a cancelled waiter.
-- KEYS: per lock, 4 keys: lock, holder info, wait queue, waiter leases
-- ARGV: per lock, 2 values: token, wake-up channel
-- Returns one 1 (released) or 0 (was not ours) per lock. The wake-up names the fair queue's
-- head (only it retries), or is empty (everyone retries) when nobody queues.
-- pcall: a key of another type (a semaphore's name reused for a lock, or the reverse) answers
-- "not ours" for that item instead of failing every lease batched with it.
local results = {}
for i = 1, #ARGV / 2 do
  local lock, info, queue, leases = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local token, channel = ARGV[2 * i - 1], ARGV[2 * i]
  local released = redis.pcall('GET', lock) == token
  if released then
    redis.call('DEL', lock, info)
  end
  local withdrew = redis.call('LREM', queue, 0, token) > 0
  redis.call('ZREM', leases, token)
  if released or (withdrew and redis.call('EXISTS', lock) == 0) then
    -- pcall: a user without channel permissions (Redis 7 ACLs) still releases; its waiters
    -- then rely on their timed re-checks.
    redis.pcall('PUBLISH', channel, redis.call('LINDEX', queue, 0) or '')
  end
  results[i] = released and 1 or 0
end
return results
