-- Remove one hold from a reentrant lock owned by ARGV[1]; free the lock when none is left.
-- KEYS: 1 lock, 2 holder info, 3 hold set
-- ARGV: 1 owner token, 2 acquisition id, 3 wake-up channel, 4 the grant's fencing token ('' to
--       skip the check: undoing an acquisition whose grant is unknown). The owner's token is
--       the same for every grant to it, so the fencing token is what tells the grant this hold
--       belongs to from a later one (after this one was lost).
-- Returns {1, holds left} when the lock was ours, {0, 0} when it was not (then nothing of the
-- current owner's is touched: acquisition ids are unique, so removing ours is harmless).
if redis.call('GET', KEYS[1]) ~= ARGV[1]
   or (ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'fence') ~= ARGV[4]) then
  return {0, 0}
end
redis.call('SREM', KEYS[3], ARGV[2])
local left = redis.call('SCARD', KEYS[3])
if left == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.pcall('PUBLISH', ARGV[3], '') -- best effort, as in release.lua
end
return {1, left}
