-- Reentrant acquisition: take the lock if free, or add a hold if this owner already has it.
-- Holds are a set of acquisition ids, so undoing one acquisition (a cancelled call) removes
-- exactly that hold. The lock key holds the owner's token as a plain string, as for plain locks.
-- KEYS: 1 lock, 2 holder info, 3 fencing counter, 4 hold set
-- ARGV: 1 owner token, 2 acquisition id, 3 ttl ms, 4 fencing counter retention ms, 5 host,
--       6 pid, 7 label, 8 (Redlock, optional) the proposed fencing token: a new grant is
--       made only if it is above this master's counter, and carries it (as
--       acquire_proposed.lua)
-- Returns {1, fence, holds, fresh} when granted (fresh: 1 for a new grant, 0 for a re-entry of
-- the owner's current grant); {0, pttl, holder info fields, server ms} when busy; {2, counter}
-- when the proposal is not above the counter (nothing written).
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('SADD', KEYS[4], ARGV[2])
  -- GT: a re-entry never shortens the lease. It runs beside the owner's renewals and extends
  -- (it joins the lease they keep), so it may land after an extend to a longer TTL that the
  -- client already counts on.
  for k = 1, 2 do redis.call('PEXPIRE', KEYS[k], ARGV[3], 'GT') end
  redis.call('PEXPIRE', KEYS[4], ARGV[3], 'GT')
  -- Re-entry keeps the grant's fencing token.
  return {1, tonumber(redis.call('HGET', KEYS[2], 'fence') or '0'), redis.call('SCARD', KEYS[4]), 0}
end
local now_us = server_now_us()
if current then
  return busy(KEYS[1], KEYS[2], math.floor(now_us / 1000))
end
local fence
if ARGV[8] then
  local counter
  fence, counter = grant_proposed(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[4], ARGV[5],
                                  ARGV[6], ARGV[7], now_us, ARGV[8])
  if not fence then
    return {2, counter}
  end
else
  fence = grant(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
                ARGV[7], now_us)
end
-- A hold set left by an earlier owner whose lease expired is not ours.
redis.call('DEL', KEYS[4])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return {1, fence, 1, 1}
