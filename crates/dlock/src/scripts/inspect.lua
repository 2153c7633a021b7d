-- Read a lock's state in one consistent snapshot; with ARGV[1] == 'break', also delete the
-- lock and its holder info (a forced release of a stale lock).
-- KEYS: 1 lock, 2 holder info, 3 fencing counter
-- Returns {held 0/1, pttl, holder info fields, server time ms, last fencing token or nil}.
-- A key of another type (a semaphore's holders, another tool's data) is not a lock: refuse,
-- so a forced release never wipes a semaphore's permits behind its holders' backs.
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. kind .. ', not a lock '
                           .. '(a semaphore of that name, or another tool\'s data)')
end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = {redis.call('EXISTS', KEYS[1]), redis.call('PTTL', KEYS[1]),
               redis.call('HGETALL', KEYS[2]), now_ms, redis.call('GET', KEYS[3])}
if ARGV[1] == 'break' then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return state
