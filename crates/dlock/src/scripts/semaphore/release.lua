-- Give back permits still held by their tokens and wake the waiters; never touches another
-- holder's permit. Also withdraws each token from the semaphore's fair wait queue, so the same
-- script cleans up after a cancelled waiter.
-- KEYS: per permit, 4 keys: holders (zset), semaphore hash, wait queue, waiter leases
-- ARGV: per permit, 3 values: token, wake-up channel, '1' for a quiet release (the rollback of
--       a Redlock attempt: its own waiter would wake itself and spin; see release.lua)
-- Returns one 1 (released: the permit's lease was still running) or 0 (not held any more)
-- per permit. A lease that ended is removed all the same (its permits were free already).
-- Releasing or withdrawing publishes the queue's head (only it retries), or '' (everyone
-- retries) when nobody queues. When no live holder and no live waiter remain, the holders and
-- the hash (with the stored limit) are deleted: an idle semaphore leaves nothing behind but
-- its fencing counter and queue keys, which expire by themselves.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- One permit; 0 without touching anything when the name holds another type now (a lock took
-- it after a forced release): one such item must not fail every release batched with it.
local function release(i)
  local holders, sem = KEYS[4 * i - 3], KEYS[4 * i - 2]
  local queue, leases = KEYS[4 * i - 1], KEYS[4 * i]
  local token, channel, quiet = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i] == '1'
  local kind = redis.call('TYPE', holders)['ok']
  if kind ~= 'zset' and kind ~= 'none' then
    -- The queue keys outlive the name's change of type (a fair lock shares them): withdraw.
    redis.call('LREM', queue, 0, token)
    redis.call('ZREM', leases, token)
    return 0
  end
  local lease_end = tonumber(redis.call('ZSCORE', holders, token) or '')
  local released = lease_end ~= nil and lease_end > now_ms
  local removed = redis.call('ZREM', holders, token) > 0
  redis.call('HDEL', sem, token)
  local withdrew = redis.call('LREM', queue, 0, token) > 0
  redis.call('ZREM', leases, token)
  if (released or withdrew) and not quiet then
    -- pcall: a user without channel permissions (Redis 7 ACLs) still releases; waiters then
    -- rely on their timed re-checks.
    redis.pcall('PUBLISH', channel, redis.call('LINDEX', queue, 0) or '')
  end
  local bound = '(' .. string.format('%.0f', now_ms)
  if (removed or withdrew) and redis.call('ZCOUNT', holders, bound, '+inf') == 0
     and redis.call('ZCOUNT', leases, bound, '+inf') == 0 then
    redis.call('DEL', holders, sem)
  end
  return released and 1 or 0
end

local results = {}
for i = 1, #ARGV / 3 do
  results[i] = release(i)
end
return results
