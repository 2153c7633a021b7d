-- Redlock: take a lock if it is free AND the client's proposed fencing token is above this
-- master's fencing counter; granting stores the proposal as the counter and as the holder
-- info's fence, so the client needs no write-back (see connection/quorum, "Fencing across
-- nodes"). Atomic.
-- KEYS: 1 lock, 2 holder info, 3 fencing counter (all in one cluster slot)
-- ARGV: 1 token, 2 ttl ms, 3 fencing counter retention ms, 4 host, 5 pid, 6 label,
--       7 the proposed fencing token
-- Returns {1, fence} when granted (or when this very token already holds the lock);
-- {0, pttl, holder info fields, server time ms} when busy; {2, counter} when the proposal
-- is not above the counter (nothing written).
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return {1, regrant(KEYS[1], KEYS[2], ARGV[2])}
end
local now_us = server_now_us()
if current then
  return busy(KEYS[1], KEYS[2], math.floor(now_us / 1000))
end
local fence, counter = grant_proposed(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3],
                                     ARGV[4], ARGV[5], ARGV[6], now_us, ARGV[7])
if not fence then
  return {2, counter}
end
return {1, fence}
