-- Remove holds from reentrant locks; free each lock when none of its holds is left.
-- KEYS: per hold, 3 keys: lock, holder info, hold set
-- ARGV: per hold, 4 values: owner token, acquisition id, wake-up channel ('' for a quiet
--       release: the rollback of a Redlock attempt, whose own waiter would wake itself and
--       spin), the grant's fencing token ('' to skip the check: undoing an acquisition whose
--       grant is unknown; '~' and a token: undoing a Redlock attempt's stray write, only where
--       the owner's grant is not that one). The owner's token is the same for every grant to
--       it, so the fencing token is what tells the grant this hold belongs to from a later one
--       (after this one was lost).
-- Returns one 1 (the lock was ours: the hold is gone) or 0 (it was not; nothing of the current
-- owner's is touched) per hold. Acquisition ids are unique, so removing ours is harmless.
-- pcall: a key of another type (a semaphore's name reused for a lock, or the reverse) answers
-- "not ours" for that item instead of failing every lease batched with it.
local results = {}
for i = 1, #ARGV / 4 do
  local lock, info, holds = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local owner, acquisition = ARGV[4 * i - 3], ARGV[4 * i - 2]
  local channel, fence = ARGV[4 * i - 1], ARGV[4 * i]
  local held = redis.pcall('GET', lock) == owner and (redis.call('HGET', info, 'fence') or '')
  if not held
     or (fence:sub(1, 1) == '~' and held == fence:sub(2))
     or (fence ~= '' and fence:sub(1, 1) ~= '~' and held ~= fence) then
    results[i] = 0
  else
    redis.call('SREM', holds, acquisition)
    if redis.call('SCARD', holds) == 0 then
      redis.call('DEL', lock, info, holds)
      if channel ~= '' then
        redis.pcall('PUBLISH', channel, '') -- best effort, as in release.lua
      end
    end
    results[i] = 1
  end
end
return results
