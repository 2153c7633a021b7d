-- Take a lock if it is free, grant a fencing token and record who holds it. Atomic.
-- KEYS: 1 lock, 2 holder info, 3 fencing counter (all in one cluster slot)
-- ARGV: 1 token, 2 ttl ms, 3 fencing counter retention ms, 4 host, 5 pid, 6 label
-- Returns {1, fence} when granted, or when this very token already holds the lock (a retry
-- whose first reply was lost); otherwise {0, pttl, holder info fields, server time ms}.
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1, tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')}
end
local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
if current then
  return {0, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
          math.floor(now_us / 1000)}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
-- The token never goes below the server clock in microseconds, so it keeps increasing even
-- when the counter was lost (restart without persistence) or expired after a long idle spell.
local fence = math.max(tonumber(redis.call('GET', KEYS[3]) or '0') + 1, now_us)
local fence_text = string.format('%.0f', fence)
redis.call('SET', KEYS[3], fence_text, 'PX', ARGV[3])
redis.call('HSET', KEYS[2], 'host', ARGV[4], 'pid', ARGV[5], 'label', ARGV[6],
           'since_ms', string.format('%.0f', math.floor(now_us / 1000)), 'fence', fence_text)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, fence}
