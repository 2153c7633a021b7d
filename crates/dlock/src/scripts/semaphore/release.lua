-- Give back permits still held by their tokens and pass them on: handed to queued waiters that
-- take hand-offs, in queue order, while their permits fit (granted in this same call, see
-- queue.lua), else by a wake-up. Never touches another holder's permit.
-- Also withdraws each token from the wait queue, so the same script cleans up after a
-- cancelled waiter (and passes on permits handed to it meanwhile). grant.lua, handoff.lua and
-- queue.lua are prepended.
-- KEYS: per permit, 6 keys: holders (zset), semaphore hash, fencing counter, wait queue,
--       waiter leases, waiters' hand-off terms
-- ARGV: per permit, 4 values: token, wake-up channel, fencing counter retention ms, '1' for a
--       quiet release: no wake-up for everyone (the rollback of a Redlock attempt: its own
--       waiter would wake itself and spin; see release.lua; hand-offs are still made)
--       A release of one permit may add one more: the releasing client's inbox (see
--       releaser_inbox in handoff.lua).
-- Returns one 1 (released: the permit's lease was still running) or 0 (not held any more)
-- per permit, then the hand-off messages for the releasing client's inbox, if it gave one. A lease that ended is removed all the same (its permits were free already).
-- When no live holder and no live waiter remain, the holders and the hash (with the stored
-- limit) are deleted: an idle semaphore leaves nothing behind but its fencing counter and
-- queue keys, which expire by themselves.
local now_us = server_now_us()
local now_ms = math.floor(now_us / 1000)

-- One permit; 0 without touching anything when the name holds another type now (a lock took
-- it after a forced release): one such item must not fail every release batched with it.
local function release(i)
  local holders, sem, fence_key = KEYS[6 * i - 5], KEYS[6 * i - 4], KEYS[6 * i - 3]
  local q = {KEYS[6 * i - 2], KEYS[6 * i - 1], KEYS[6 * i]}
  local token, channel = ARGV[4 * i - 3], ARGV[4 * i - 2]
  local retention, quiet = ARGV[4 * i - 1], ARGV[4 * i] == '1'
  local kind = redis.call('TYPE', holders)['ok']
  if kind ~= 'zset' and kind ~= 'none' then
    -- The queue keys outlive the name's change of type (a fair lock shares them): withdraw.
    withdraw(q, token)
    return 0
  end
  local lease_end = tonumber(redis.call('ZSCORE', holders, token) or '')
  local released = lease_end ~= nil and lease_end > now_ms
  local removed = redis.call('ZREM', holders, token) > 0
  redis.call('HDEL', sem, token)
  local withdrew = withdraw(q, token)
  -- A lease that ended (`removed`, not `released`) freed its permits already, but nobody
  -- passed them on: a handed claim can lapse while its holder was paused, say.
  local s = {holders = holders, sem = sem, fence = fence_key, q = q, channel = channel,
             retention = retention, now_us = now_us}
  if released or withdrew or removed then
    -- pcall: a user without channel permissions (Redis 7 ACLs) still releases; waiters then
    -- rely on their timed re-checks.
    if pass_on(s) and not quiet then
      redis.pcall('PUBLISH', channel, '')
    end
  end
  local bound = '(' .. string.format('%.0f', now_ms)
  if (removed or withdrew) and redis.call('ZCOUNT', holders, bound, '+inf') == 0
     and redis.call('ZCOUNT', q[2], bound, '+inf') == 0 then
    redis.call('DEL', holders, sem)
  end
  return released and 1 or 0
end

local permits = release_holds(4)
if not permits then
  return redis.error_reply('ERR dlock: release takes 4 arguments per permit, or one permit '
                           .. 'and an inbox')
end
local results = {}
for i = 1, permits do
  results[i] = release(i)
end
return with_handoffs(results)
