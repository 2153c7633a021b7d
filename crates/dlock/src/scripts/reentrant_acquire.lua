-- Reentrant acquisition: take the lock if free, or add a hold if this owner already has it.
-- Holds are a set of acquisition ids, so undoing one acquisition (a cancelled call) removes
-- exactly that hold. The lock key holds the owner's token as a plain string, as for plain locks.
-- KEYS: 1 lock, 2 holder info, 3 fencing counter, 4 hold set
-- ARGV: 1 owner token, 2 acquisition id, 3 ttl ms, 4 fencing counter retention ms, 5 host,
--       6 pid, 7 label
-- Returns {1, fence, holds} when granted; otherwise {0, pttl, holder info fields, server ms}.
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('SADD', KEYS[4], ARGV[2])
  for k = 1, 2 do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
  -- Re-entry keeps the grant's fencing token.
  return {1, tonumber(redis.call('HGET', KEYS[2], 'fence') or '0'), redis.call('SCARD', KEYS[4])}
end
local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
if current then
  return {0, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
          math.floor(now_us / 1000)}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
local fence = math.max(tonumber(redis.call('GET', KEYS[3]) or '0') + 1, now_us)
local fence_text = string.format('%.0f', fence)
redis.call('SET', KEYS[3], fence_text, 'PX', ARGV[4])
redis.call('HSET', KEYS[2], 'host', ARGV[5], 'pid', ARGV[6], 'label', ARGV[7],
           'since_ms', string.format('%.0f', math.floor(now_us / 1000)), 'fence', fence_text)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
-- A hold set left by an earlier owner whose lease expired is not ours.
redis.call('DEL', KEYS[4])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return {1, fence, 1}
