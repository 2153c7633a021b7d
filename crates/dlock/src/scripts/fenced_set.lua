-- Storage-side fencing: write only if the writer's token is at least the largest seen.
-- KEYS: 1 the resource (a hash: value, fence)
-- ARGV: 1 fencing token, 2 value
-- Returns 1 when written, 0 when refused (a newer holder has written since: the writer is
-- stale and must stop).
local last = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if tonumber(ARGV[1]) < last then
  return 0
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
return 1
