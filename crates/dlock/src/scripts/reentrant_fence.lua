-- Redlock fencing write-back for a reentrant lock's fresh grant: raise a node's fencing
-- counter to at least the grant's token and make the owner's key there that grant's, holding
-- only this acquisition. A node may have answered the attempt with an earlier grant to the
-- same owner (a re-entry where the owner's key outlived a lease a majority no longer holds):
-- that grant is over, and its holds go with it, so they can never keep the new grant's key
-- alive after its last hold is released.
-- KEYS: 1 fencing counter, 2 holder info, 3 lock, 4 hold set
-- ARGV: 1 the grant's token (fencing), 2 counter retention ms, 3 the owner token,
--       4 acquisition id
-- Returns 1 if this acquisition holds the owner's key on this node with the grant's token
-- (the write-back counts), else 0: the key is not the owner's, the hold is gone, or a later
-- grant to the same owner (a concurrent re-entry's) is there.
local fence = tonumber(ARGV[1])
-- A damaged counter (not a number, or NaN) is raised too, rather than failing the call.
local counter = tonumber(redis.call('GET', KEYS[1]) or '') or 0
if not (counter >= fence) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if redis.call('GET', KEYS[3]) ~= ARGV[3] or redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 0 then
  return 0
end
local held = tonumber(redis.call('HGET', KEYS[2], 'fence') or '0')
if held > fence then
  return 0
end
if held < fence then
  redis.call('HSET', KEYS[2], 'fence', ARGV[1])
  local left = redis.call('PTTL', KEYS[3])
  redis.call('DEL', KEYS[4])
  redis.call('SADD', KEYS[4], ARGV[4])
  if left > 0 then
    redis.call('PEXPIRE', KEYS[4], left)
  end
end
return 1
