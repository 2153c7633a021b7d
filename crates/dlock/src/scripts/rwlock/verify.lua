-- Check, read-only, that readers still hold their leases: the name is in read mode and their
-- lease runs past the server's now.
-- KEYS: per hold, 2 keys: the name, readers
-- ARGV: per hold, 1 value: token
-- Returns one 1 (held) or 0 per hold.
local now_ms = server_now_ms()
local results = {}
for i = 1, #ARGV do
  local lease_end = redis.pcall('GET', KEYS[2 * i - 1]) == READ_MODE
                    and tonumber(redis.call('ZSCORE', KEYS[2 * i], ARGV[i]) or '')
  results[i] = (lease_end and lease_end > now_ms) and 1 or 0
end
return results
