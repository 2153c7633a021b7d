-- Release read-write lock holds still held by their tokens, and wake the waiters when the lock
-- is free; never touches another holder's hold. A token that is not a holder (any more) is
-- withdrawn from the wait queue instead, so the same script undoes a cancelled waiter.
-- KEYS: per hold, 6 keys: the name, holder info, readers, readers' info, wait queue, waiter
--       leases
-- ARGV: per hold, 3 values: token, 'read' | 'write', wake-up channel
-- Returns one 1 (released: the hold was still ours) or 0 (not ours any more) per hold.
-- Wake-ups publish '' (every waiter retries): when the lock became free, when the read mode's
-- end came sooner, or when a queued waiter left (a writer leaving the queue may let readers in).
-- pcall: a key of another type (a semaphore of this name) answers "not ours" for that item
-- instead of failing every hold batched with it.
local now_ms = server_now_ms()
local results = {}
for i = 1, #ARGV / 3 do
  local k = 6 * (i - 1)
  local lock, info, readers, rinfo = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local queue, leases = KEYS[k + 5], KEYS[k + 6]
  local token, reading, channel = ARGV[3 * i - 2], ARGV[3 * i - 1] == 'read', ARGV[3 * i]
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
  local entry = (reading and 'r:' or 'w:') .. token
  local withdrew = redis.call('ZREM', leases, entry) > 0
  if withdrew then
    redis.call('LREM', queue, 0, entry)
  end
  if freed or withdrew or sooner then
    -- pcall: a user without channel permissions (Redis 7 ACLs) still releases; waiters then
    -- rely on their timed re-checks.
    redis.pcall('PUBLISH', channel, '')
  end
  results[i] = released and 1 or 0
end
return results
