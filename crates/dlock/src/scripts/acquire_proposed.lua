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
local counter = redis.call('GET', KEYS[3])
if counter and tonumber(counter) >= tonumber(ARGV[7]) then
  return {2, counter}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], 'host', ARGV[4], 'pid', ARGV[5], 'label', ARGV[6],
           'since_ms', string.format('%.0f', math.floor(now_us / 1000)), 'fence', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
-- Answered as the caller's text, exactly what was stored (no round trip through a double).
return {1, ARGV[7]}
