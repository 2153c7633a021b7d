-- Redlock fencing write-back for a read grant: raise a master's fencing counter to at least
-- the reader's token (the largest counter a majority answered). Every later write grant's
-- majority then meets a master whose counter is at least that token, so its token is larger:
-- a reader's token stays below every later write's, even when one master's counter was
-- raised alone (by a write grant rolled back there).
-- KEYS: 1 fencing counter, 2 readers (zset)
-- ARGV: 1 the reader's token (fencing), 2 counter retention ms, 3 the reader's token
-- Returns 1 if the reader still holds on this master (the write-back counts), else 0.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if redis.pcall('ZSCORE', KEYS[2], ARGV[3]) then
  return 1
end
return 0
