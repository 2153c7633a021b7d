-- Renew permits whose leases are still running; never revives a lease that ended (its permit
-- may already be someone else's) and never re-creates a purged one.
-- KEYS: per permit, 2 keys: holders (zset), semaphore hash
-- ARGV: per permit, 2 values: token, ttl ms
-- Returns one 1 (renewed: the lease now ends ttl ms from the server's now) or 0 (not held any
-- more) per permit. The keys live at least as long as the new lease, never shorter than
-- before: other holders' leases may be longer. A watchdog renews every permit of a node in
-- one call.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- pcall: a key of another type (a semaphore's name reused for a lock, or the reverse) answers
-- "not ours" for that item instead of failing every lease batched with it.
local results = {}
for i = 1, #ARGV / 2 do
  local holders, sem = KEYS[2 * i - 1], KEYS[2 * i]
  local token, ttl = ARGV[2 * i - 1], ARGV[2 * i]
  local lease_end = tonumber(redis.pcall('ZSCORE', holders, token) or '')
  if lease_end and lease_end > now_ms then
    redis.call('ZADD', holders, 'XX', string.format('%.0f', now_ms + tonumber(ttl)), token)
    for _, key in ipairs({holders, sem}) do
      if redis.call('PTTL', key) < tonumber(ttl) then
        redis.call('PEXPIRE', key, ttl)
      end
    end
    results[i] = 1
  else
    results[i] = 0
  end
end
return results
