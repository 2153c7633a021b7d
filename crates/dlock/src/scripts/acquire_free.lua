-- Take a lock if it is free, grant a fencing token and record who holds it; never queue. The
-- lean form of acquire.lua for attempts that do not queue outside fair mode (try_lock, and a
-- waiter's first attempt before it can hear a hand-off), so they pay for no queue keys. Atomic.
-- KEYS: 1 lock, 2 holder info, 3 fencing counter (all in one cluster slot)
-- ARGV: 1 token, 2 ttl ms, 3 fencing counter retention ms, 4 host, 5 pid, 6 label
-- Returns {1, fence} when granted, or when this very token already holds the lock (a retry
-- whose first reply was lost); otherwise {0, pttl, holder info fields, server time ms}.
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return {1, regrant(KEYS[1], KEYS[2], ARGV[2])}
end
local now_us = server_now_us()
if current then
  return busy(KEYS[1], KEYS[2], math.floor(now_us / 1000))
end
return {1, grant(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
                 now_us)}
