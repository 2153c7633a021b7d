-- Change a semaphore's permit limit. Holders above a smaller limit keep their permits; no
-- new grant is made until the permits in use leave room under it. Callers naming the old
-- limit are answered with the new one (see acquire.lua).
-- grant.lua, handoff.lua and queue.lua are prepended.
-- KEYS: 1 holders (zset), 2 semaphore hash, 3 fencing counter, 4 wait queue, 5 waiter
--       leases, 6 waiters' hand-off terms
-- ARGV: 1 new limit (whole number >= 1), 2 ttl ms: how long the hash (and so the limit) is
--       kept at least, for a semaphore nobody holds or waits for, 3 wake-up channel,
--       4 '1' on Redlock: refuse to raise the limit while live holders remain (-2, nothing
--       changed). A permit granted under N sits on the masters N needs; a larger N needs more,
--       and old grants on fewer masters could then add up to more than the new N.
--       5 fencing counter retention ms
-- ARGV 1 may also be 'unset': drop the stored limit if nobody holds a permit (see below).
-- Returns the previous stored limit, or -1 when none was stored. When the limit grew, the room
-- made passes on to queued waiters as a release's does (see queue.lua), and if some is left,
-- every waiter is woken ('').
local now_us = server_now_us()
local now_ms = math.floor(now_us / 1000)
local holders, sem = KEYS[1], KEYS[2]
-- 'unset' (putting back a refused raise where no limit was stored): drop the stored limit,
-- only while nobody holds a permit here.
if ARGV[1] == 'unset' then
  local previous = tonumber(redis.call('HGET', sem, 'limit') or '-1')
  if redis.call('ZCOUNT', holders, '(' .. string.format('%.0f', now_ms), '+inf') == 0 then
    redis.call('HDEL', sem, 'limit')
  end
  return previous
end
local limit = tonumber(ARGV[1])
if not (limit and limit >= 1 and limit == math.floor(limit)) then
  return redis.error_reply('ERR dlock semaphore: the limit must be a whole number >= 1, got '
                           .. ARGV[1])
end

for _, dead in ipairs(redis.call('ZRANGEBYSCORE', holders, '-inf', now_ms)) do
  redis.call('ZREM', holders, dead)
  redis.call('HDEL', sem, dead)
end

local previous = tonumber(redis.call('HGET', sem, 'limit') or '-1')
if ARGV[4] == '1' and previous >= 0 and limit > previous
   and redis.call('ZCOUNT', holders, '(' .. string.format('%.0f', now_ms), '+inf') > 0 then
  return -2
end
redis.call('HSET', sem, 'limit', string.format('%.0f', limit))
-- Never shorten the hash's life: it must outlast its holders' leases and its waiters.
if redis.call('PTTL', sem) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', sem, ARGV[2])
end
if previous >= 0 and limit > previous then
  local s = {holders = holders, sem = sem, fence = KEYS[3], q = {KEYS[4], KEYS[5], KEYS[6]},
             channel = ARGV[3], retention = ARGV[5], now_us = now_us}
  if pass_on(s) then
    -- Room no queued waiter took: everyone may retry. Best effort, as in release.lua.
    redis.pcall('PUBLISH', ARGV[3], '')
  end
end
return previous
