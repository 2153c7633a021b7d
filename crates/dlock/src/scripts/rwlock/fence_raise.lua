-- Redlock fencing write-back for a read grant: raise a master's fencing counter to at least
-- the reader's token (the largest counter a majority answered). Every later write grant's
-- majority then meets a master whose counter is at least that token, so its token is larger:
-- a reader's token stays below every later write's, even when one master's counter was
-- raised alone (by a write grant rolled back there).
-- shared.lua is prepended.
-- KEYS: 1 fencing counter, 2 readers (zset), 3 the name
-- ARGV: 1 the reader's fencing token, 2 counter retention ms, 3 the reader's token
-- Returns 1 if the reader still holds on this master (the name in read mode, the reader's
-- lease running: the write-back counts), else 0.
-- A damaged counter (not a number, or NaN) is raised too, rather than failing the call.
local current = tonumber(redis.call('GET', KEYS[1]) or '') or 0
if not (current >= tonumber(ARGV[1])) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if redis.pcall('GET', KEYS[3]) ~= READ_MODE then
  return 0
end
local lease_end = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[3]) or '')
if lease_end and lease_end > server_now_ms() then
  return 1
end
return 0
