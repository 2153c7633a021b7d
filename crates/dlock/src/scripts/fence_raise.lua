-- Redlock fencing write-back: raise a node's fencing counter to at least the grant's token,
-- so any later grant whose majority includes this node gets a larger one.
-- KEYS: 1 fencing counter, 2 holder info, 3 lock
-- ARGV: 1 the grant's token (fencing), 2 counter retention ms, 3 the owner token
-- Returns 1 if the lock on this node is still ours (the write-back counts), else 0.
-- A damaged counter (not a number, or NaN) is raised too, rather than failing the call.
local current = tonumber(redis.call('GET', KEYS[1]) or '') or 0
if not (current >= tonumber(ARGV[1])) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if redis.call('GET', KEYS[3]) ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[2], 'fence', ARGV[1])
return 1
