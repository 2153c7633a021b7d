-- Read a semaphore's state in one consistent snapshot; optionally break permits (a forced
-- release of stale holders).
-- KEYS: 1 holders (zset), 2 semaphore hash, 3 fencing counter
-- ARGV: 1 'read' | 'break' (free every permit) | 'break-one' (free the permit whose grant has
--       fencing token ARGV 2: holders are named by fence, never by their token),
--       2 fencing token (break-one; else ignored), 3 wake-up channel (a break publishes '' on
--       it, so every waiter retries)
-- Returns {stored limit or -1, server time ms, last fencing token (counter) or nil,
--          {holder info json with "expires_in_ms", ...} of the live holders before any break,
--          by lease end, number of holders freed}.
-- Holders whose lease ended are purged first. A break keeps the stored limit: this script
-- does not see the wait queue, and the limit must live as long as waiters do (acquire and
-- release delete it once nothing is left).
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local holders, sem = KEYS[1], KEYS[2]
local mode = ARGV[1]
local target = mode == 'break-one' and tonumber(ARGV[2] or '')
if not (mode == 'read' or mode == 'break' or target) then
  return redis.error_reply("ERR dlock semaphore: inspect wants 'read', 'break' or 'break-one' "
                           .. 'and a fencing token, got ' .. tostring(mode) .. ' '
                           .. tostring(ARGV[2]))
end

for _, dead in ipairs(redis.call('ZRANGEBYSCORE', holders, '-inf', now_ms)) do
  redis.call('ZREM', holders, dead)
  redis.call('HDEL', sem, dead)
end

local infos = {}
local freed = 0
local live = redis.call('ZRANGE', holders, 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  local token = live[i]
  local json = redis.call('HGET', sem, token)
  local info = json and cjson.decode(json) or {}
  if mode == 'break' or (target and tonumber(info.fence or '') == target) then
    redis.call('ZREM', holders, token)
    redis.call('HDEL', sem, token)
    freed = freed + 1
  end
  info.expires_in_ms = string.format('%.0f', tonumber(live[i + 1]) - now_ms)
  infos[#infos + 1] = cjson.encode(info)
end
if freed > 0 then
  -- Best effort, as in release.lua.
  redis.pcall('PUBLISH', ARGV[3], '')
end
return {tonumber(redis.call('HGET', sem, 'limit') or '-1'), now_ms, redis.call('GET', KEYS[3]),
        infos, freed}
