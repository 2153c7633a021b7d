-- Fair (FIFO) acquisition: the lock goes to the oldest live waiter. Atomic.
-- KEYS: 1 lock, 2 holder info, 3 fencing counter, 4 wait queue (list), 5 waiter leases (zset)
-- ARGV: 1 token, 2 ttl ms, 3 fencing counter retention ms, 4 host, 5 pid, 6 label,
--       7 waiter lease ms (0: do not queue, as try_lock), 8 wake-up channel
-- Returns {1, fence} when granted; otherwise
-- {0, pttl, holder info fields, server time ms, ms until the lease of the waiter just ahead
-- ends or -1}.
local now_us = server_now_us()
local now_ms = math.floor(now_us / 1000)
local token = ARGV[1]

-- Waiters whose lease ran out (dead, or gave up without withdrawing) leave the queue.
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now_ms)
for _, waiter in ipairs(expired) do
  redis.call('LREM', KEYS[4], 0, waiter)
  redis.call('ZREM', KEYS[5], waiter)
end

local current = redis.call('GET', KEYS[1])
if current == token then
  return {1, regrant(KEYS[1], KEYS[2], ARGV[2])}
end
local head = redis.call('LINDEX', KEYS[4], 0)
if not current and (not head or head == token) then
  if head then
    redis.call('LPOP', KEYS[4])
    redis.call('ZREM', KEYS[5], token)
  end
  return {1, grant(KEYS[1], KEYS[2], KEYS[3], token, ARGV[2], ARGV[3], ARGV[4], ARGV[5],
                   ARGV[6], now_us)}
end
if not current and #expired > 0 then
  -- The lock is free and the queue moved up: wake the new head (best effort, as in
  -- release.lua).
  redis.pcall('PUBLISH', ARGV[8], head or '')
end

local lease = tonumber(ARGV[7])
if lease > 0 then
  if not redis.call('ZSCORE', KEYS[5], token) then
    redis.call('RPUSH', KEYS[4], token)
  end
  redis.call('ZADD', KEYS[5], now_ms + lease, token)
  -- The queue never outlives its longest waiter lease.
  for k = 4, 5 do
    if redis.call('PTTL', KEYS[k]) < lease then
      redis.call('PEXPIRE', KEYS[k], lease)
    end
  end
  head = redis.call('LINDEX', KEYS[4], 0)
end
-- The caller re-checks no later than the lease of the waiter just ahead of it ends (for a
-- caller not in the queue, the last waiter's): if that waiter died, its entry is purged then
-- and the caller moves up at once, even when the dead waiter became the head after the
-- caller's last look (a release wakes only the head, and a dead head never answers).
local ahead_left = -1
local ahead = nil
for _, waiter in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
  if waiter == token then
    break
  end
  ahead = waiter
end
if ahead then
  local ahead_end = redis.call('ZSCORE', KEYS[5], ahead)
  if ahead_end then
    ahead_left = tonumber(ahead_end) - now_ms
  end
end
return busy(KEYS[1], KEYS[2], now_ms, ahead_left)
