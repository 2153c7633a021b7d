-- Take a lock: at once if it is free, else (waiting) join its queue. Atomic.
-- KEYS: 1 lock, 2 holder info, 3 fencing counter, 4 wait queue, 5 waiter leases,
--       6 waiters' hand-off terms (all in one cluster slot)
-- ARGV: 1 token, 2 ttl ms, 3 fencing counter retention ms, 4 host, 5 pid, 6 label,
--       7 'fair' (a free lock goes to the queue's head first) or 'plain' (to whoever asks),
--       8 waiter lease ms (0: do not queue), 9 wake-up channel,
--       10 claim lease ms of a hand-off (0: when the lock is freed, wake us instead),
--       11 the channel to send a hand-off to ('': the wake-up channel)
-- Returns {1, fence} when granted, or when this very token already holds the lock (a retry
-- whose first reply was lost, or a hand-off); otherwise {0, pttl, holder info fields, server
-- time ms, fair mode: ms until the lease of the waiter just ahead ends, else -1, the fencing
-- counter (a hand-off message with a token no larger was made before this answer)}.
local q = {KEYS[4], KEYS[5], KEYS[6]}
local token = ARGV[1]
local current = redis.call('GET', KEYS[1])
if current == token then
  withdraw(q, token)
  return {1, regrant(KEYS[1], KEYS[2], ARGV[2])}
end
local now_us = server_now_us()
local now_ms = math.floor(now_us / 1000)
local fair = ARGV[7] == 'fair'
local lease = tonumber(ARGV[8])
-- Fair: waiters whose lease lapsed leave first, so neither the head nor the one just ahead
-- is a dead waiter.
local head = fair and live_head(q, now_ms) or nil
if not current then
  if not head or head == token then
    if lease > 0 then
      -- A waiter: it may have queued in an earlier attempt (try_lock never does).
      withdraw(q, token)
    end
    return {1, grant(KEYS[1], KEYS[2], KEYS[3], token, ARGV[2], ARGV[3], ARGV[4], ARGV[5],
                     ARGV[6], now_us)}
  end
  -- Fair, and the free lock is the head's (its holder's lease ran out, or the head was woken
  -- and has not come back yet): hand it over, or wake the head again.
  hand_to(KEYS[1], KEYS[2], KEYS[3], q, head, ARGV[9], ARGV[3], now_us)
end

if lease > 0 then
  enqueue(q, token, now_ms, lease, ARGV[10], ARGV[11], ARGV[4], ARGV[5], ARGV[6])
end
local function busy_now(ahead_left)
  local reply = busy(KEYS[1], KEYS[2], now_ms, ahead_left)
  -- Without a counter (lost, evicted), the clock: any earlier hand-off's token is below it.
  reply[6] = redis.call('GET', KEYS[3]) or string.format('%.0f', server_now_us())
  return reply
end
if not fair then
  return busy_now(-1)
end
-- The caller re-checks no later than the lease of the waiter just ahead of it ends (for a
-- caller not in the queue, the last waiter's): if that waiter died, its entry is purged then
-- and the caller moves up at once, even when the dead waiter became the head after the
-- caller's last look (a wake-up goes to the head only, and a dead head never answers).
-- (LPOS from the tail, and only for a queued caller: a caller just queued is last, and a
-- search for one not in the list would read all of it.)
local place = redis.call('ZSCORE', KEYS[5], token)
              and redis.call('LPOS', KEYS[4], token, 'RANK', -1)
local ahead
if place then
  ahead = place > 0 and redis.call('LINDEX', KEYS[4], place - 1) or nil
else
  ahead = redis.call('LINDEX', KEYS[4], -1)
end
local ahead_left = -1
local ahead_end = ahead and redis.call('ZSCORE', KEYS[5], ahead)
if ahead_end then
  ahead_left = tonumber(ahead_end) - now_ms
end
return busy_now(ahead_left)
