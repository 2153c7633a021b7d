-- Check, read-only, that permits are still held: their leases run past the server's now.
-- KEYS: per permit, 1 key: holders (zset)
-- ARGV: per permit, 1 value: token
-- Returns one 1 (held) or 0 (lease over, purged or never granted) per permit.
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- pcall: a key of another type (a semaphore's name reused for a lock, or the reverse) answers
-- "not ours" for that item instead of failing every lease batched with it.
local results = {}
for i = 1, #ARGV do
  local lease_end = tonumber(redis.pcall('ZSCORE', KEYS[i], ARGV[i]) or '')
  results[i] = (lease_end and lease_end > now_ms) and 1 or 0
end
return results
