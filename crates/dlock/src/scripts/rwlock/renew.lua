-- Renew readers' leases that are still running; never revives one that ended (a writer may
-- hold the lock since) and never re-creates a purged one. Writers renew as plain locks do.
-- KEYS: per hold, 4 keys: the name, holder info, readers, readers' info
-- ARGV: per hold, 2 values: token, ttl ms
-- Returns one 1 (renewed: the lease now ends ttl ms from the server's now) or 0 per hold. The
-- read-mode keys then end with the latest reader's lease (see shared.lua).
-- pcall: a key of another type answers "not ours" for that item.
local now_ms = server_now_ms()
local results = {}
for i = 1, #ARGV / 2 do
  local lock, info, readers, rinfo = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local token, ttl = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local lease_end = redis.pcall('GET', lock) == READ_MODE
                    and tonumber(redis.call('ZSCORE', readers, token) or '')
  if lease_end and lease_end > now_ms then
    redis.call('ZADD', readers, 'XX', string.format('%.0f', now_ms + ttl), token)
    fit_read_mode(lock, info, readers, rinfo, now_ms, false)
    results[i] = 1
  else
    results[i] = 0
  end
end
return results
