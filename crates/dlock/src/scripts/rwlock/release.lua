-- Release read-write lock holds still held by their tokens, and pass the lock on when it is
-- free: to the queue's head if it is a writer that takes hand-offs (granted in this same call,
-- see hand_to_writer below), else by waking every waiter. Never touches another
-- holder's hold. A token that is not a holder (any more) is withdrawn from the wait queue
-- instead, so the same script undoes a cancelled waiter. grant.lua, handoff.lua and shared.lua
-- are prepended.
-- KEYS: per hold, 9 keys: the name, holder info, readers, readers' info, wait queue, waiter
--       leases, fencing counter, queued writers' hand-off terms, the plain lock's waiter
--       leases (a plain lock of this name waiting)
-- ARGV: per hold, 4 values: token, 'read' | 'write' (with ':quiet' for a quiet release: no
--       wake-up for everyone, for the rollback of a Redlock attempt, whose own waiter would
--       wake itself and spin), wake-up channel, fencing counter retention ms
-- Returns one 1 (released: the hold was still ours) or 0 (not ours any more) per hold.
-- Wake-ups publish '' (every waiter retries): when the lock became free and was not handed,
-- when the read mode's end came sooner, or when a queued waiter left (a writer leaving the
-- queue may let readers in).
-- pcall: a key of another type (a semaphore of this name) answers "not ours" for that item
-- instead of failing every hold batched with it.

-- The wait queue's entries are 'w:' or 'r:' and the token, kept as handoff.lua keeps a lock's
-- queue (`q`: list, leases, hand-off terms, by entry). Hands the free lock to the live head if
-- it is a writer that takes hand-offs: grants it the write side for its claim lease, cut to
-- what is left of its queue entry, and tells it (and the next in line) as a lock's hand-off
-- does. Returns true when handed; otherwise the caller wakes everyone. Readers are not handed
-- the lock: they retry when woken (many may share it, and a reader's grant is cheap).
local function hand_to_writer(lock, info, fence_key, q, lock_waiters, channel, retention, now_us)
  local now_ms = math.floor(now_us / 1000)
  if redis.call('ZCOUNT', lock_waiters, '(' .. now_ms, '+inf') > 0 then
    -- A plain lock of this name waits too (its own queue, see handoff.lua): handing on to rw
    -- writers would keep the name from it for as long as writers keep coming. Wake everyone.
    return false
  end
  local head = live_head(q, now_ms)
  if not head or string.sub(head, 1, 2) ~= 'w:' then
    return false
  end
  local terms = terms_of(q, head)
  local lease_end = tonumber(redis.call('ZSCORE', q[2], head))
  if not terms or terms.permits or not lease_end then
    return false
  end
  local claim = math.min(tonumber(terms.claim), lease_end - now_ms)
  if claim < MIN_CLAIM then
    return false
  end
  withdraw(q, head)
  local writer = string.sub(head, 3)
  local fence = grant(lock, info, fence_key, writer, claim, retention,
                      tostring(terms.host or ''), tostring(terms.pid or ''),
                      tostring(terms.label or ''), now_us)
  local next = redis.call('LINDEX', q[1], 0)
  local next_terms = next and terms_of(q, next)
  publish_handoff(writer, terms, fence, claim, channel, next and string.sub(next, 3),
                  next_terms)
  return true
end

local now_us = server_now_us()
local now_ms = math.floor(now_us / 1000)
local results = {}
for i = 1, #ARGV / 4 do
  local k = 9 * (i - 1)
  local lock, info, readers, rinfo = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local q = {KEYS[k + 5], KEYS[k + 6], KEYS[k + 8]}
  local fence_key = KEYS[k + 7]
  local token, side = ARGV[4 * i - 3], ARGV[4 * i - 2]
  local reading, quiet = string.sub(side, 1, 4) == 'read', string.sub(side, -6) == ':quiet'
  local channel, retention = ARGV[4 * i - 1], ARGV[4 * i]
  local current = redis.pcall('GET', lock)
  local released, freed, sooner = false, false, false
  if reading and current == READ_MODE then
    local lease_end = tonumber(redis.call('ZSCORE', readers, token) or '')
    if lease_end then
      local before = redis.call('PTTL', lock)
      released = lease_end > now_ms
      redis.call('ZREM', readers, token)
      redis.call('HDEL', rinfo, token)
      purge_readers(readers, rinfo, now_ms)
      freed = not fit_read_mode(lock, info, readers, rinfo, now_ms, true)
      -- The key now ends sooner (this reader's lease was the latest): waiters re-check, since
      -- the readers left may be dead and free it at that sooner end, which publishes nothing.
      sooner = not freed and redis.call('PTTL', lock) < before
    end
  elseif not reading and current == token then
    redis.call('DEL', lock, info)
    released, freed = true, true
  end
  local withdrew = withdraw(q, (reading and 'r:' or 'w:') .. token)
  local lock_waiters = KEYS[k + 9]
  if freed and hand_to_writer(lock, info, fence_key, q, lock_waiters, channel, retention,
                              now_us) then
    freed = false
  end
  if (freed or withdrew or sooner) and not quiet then
    -- pcall: a user without channel permissions (Redis 7 ACLs) still releases; waiters then
    -- rely on their timed re-checks.
    redis.pcall('PUBLISH', channel, '')
  end
  results[i] = released and 1 or 0
end
return results
