-- Take a read-write lock's read or write side, or join its wait queue. Atomic; grant.lua,
-- handoff.lua and shared.lua are prepended.
-- KEYS: 1 the name (see shared.lua), 2 holder info, 3 fencing counter, 4 readers (zset),
--       5 readers' info (hash), 6 wait queue (list of 'w:' or 'r:' .. token, in arrival order),
--       7 waiter leases (zset: entry -> server ms when it ends), 8 the plain lock's waiter
--       leases (a plain lock of this name waiting: see handoff.lua), 9 queued writers' hand-off
--       terms (hash: entry -> JSON, see handoff.lua)
-- ARGV: 1 token, 2 ttl ms, 3 counter retention ms, 4 host, 5 pid, 6 label, 7 'read' | 'write',
--       8 '1': fair (readers queue too, and everyone is served in arrival order) | '0',
--       9 waiter lease ms (0: do not queue), 10 the claim lease ms of a hand-off (0: when the
--       lock is freed, wake this waiter instead), 11 the channel to send a hand-off to ('': the
--       wake-up channel), 12 the waiter's id in the queue ('': the token; on Redlock every
--       attempt has a token of its own, and the writer's place in the queue must outlive them),
--       13 (Redlock, writers, optional) the proposed fencing token: a write grant is made only
--       if it is above this master's counter, and carries it (as acquire_proposed.lua)
-- Who gets in:
-- - a writer, when nobody holds the lock and no plain lock of the name waits (in fair mode:
--   and nobody waits ahead of it);
-- - a reader, when no writer holds it and no writer waits ahead of it (for a reader not in the
--   queue, any waiting writer is ahead), nor a plain lock's waiter: once a writer (or a plain
--   lock) waits, new readers wait behind it, so a stream of readers cannot starve it.
-- A waiting writer queues (a reader in fair mode, or to take a hand-off) with a waiter lease
-- that its retries renew: a waiter that died stops blocking readers when its lease ends.
-- Returns {1, fence} when granted, or when this token already holds that side (a retry whose
-- reply was lost); {2, counter} when a writer's proposal is not above the counter (nothing
-- granted; only lapsed readers and waiters purged). A writer's fence is the next fencing
-- token; a reader's is the counter as it is (the last write grant's token, or the token of the
-- hand-off that began this read period; the server's clock in µs when the counter was lost).
-- Otherwise {0, pttl, holder info fields, server ms, ms until the earliest waiter lease ends or
-- -1, {reader JSON, ...} (at most 16), the fencing counter (a hand-off with a token no larger
-- was made before this answer)}.
local lock, info, fence_key = KEYS[1], KEYS[2], KEYS[3]
local readers, rinfo, queue, leases = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local lock_waiters = KEYS[8]
local q = {queue, leases, KEYS[9]}
local token, ttl = ARGV[1], tonumber(ARGV[2])
local reading = ARGV[7] == 'read'
local fair = ARGV[8] == '1'
local wait_ms = tonumber(ARGV[9]) or 0
local waiter = (ARGV[12] or '') ~= '' and ARGV[12] or token
local entry = (reading and 'r:' or 'w:') .. waiter
local now_us = server_now_us()
local now_ms = math.floor(now_us / 1000)
-- Another type (a semaphore of this name): Redis's WRONGTYPE, as for a plain lock.
local current = redis.call('GET', lock)

if current == READ_MODE then
  purge_readers(readers, rinfo, now_ms)
  local mine = tonumber(redis.call('ZSCORE', readers, token) or '')
  if reading and mine and mine > now_ms then
    redis.call('ZADD', readers, string.format('%.0f', now_ms + ttl), token)
    fit_read_mode(lock, info, readers, rinfo, now_ms, false)
    return {1, tonumber(reader_holder(rinfo, token).fence) or 0}
  end
  if not first_reader(readers, now_ms) then
    -- The key outlived its last reader within the same millisecond.
    redis.call('DEL', lock, info, readers, rinfo)
    current = false
  end
elseif current == token and not reading then
  return {1, regrant(lock, info, ARGV[2])}
end

for _, dead in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms, 'LIMIT', 0,
                                 PURGE_BATCH)) do
  withdraw(q, dead)
end
if redis.call('LLEN', queue) > redis.call('ZCARD', leases) then
  -- Damaged queue data (an entry whose lease is gone, say evicted): such an entry would hold
  -- everyone behind it back for good. Drop it.
  for _, waiter in ipairs(redis.call('LRANGE', queue, 0, -1)) do
    if not redis.call('ZSCORE', leases, waiter) then
      redis.call('LREM', queue, 0, waiter)
    end
  end
end
local position = redis.call('LPOS', queue, entry)
local blocked
if reading then
  blocked = (current and current ~= READ_MODE)
            or redis.call('ZCOUNT', lock_waiters, '(' .. now_ms, '+inf') > 0
  if not blocked and position ~= 0 then
    -- Any writer ahead (for a caller not queued: anywhere in the queue).
    local ahead = redis.call('LRANGE', queue, 0, position and position - 1 or -1)
    for _, waiter in ipairs(ahead) do
      -- (A writer entry without a lease is damaged data, not a waiter.)
      if string.sub(waiter, 1, 2) == 'w:' and redis.call('ZSCORE', leases, waiter) then
        blocked = true
        break
      end
    end
  end
else
  -- A plain lock of this name waiting holds writers back too: its releases wake everyone
  -- while it waits, but a writer that asks again at once won every race (the plain waiter
  -- could wait out its whole limit).
  blocked = current or (fair and position ~= 0 and redis.call('LLEN', queue) > 0)
            or redis.call('ZCOUNT', lock_waiters, '(' .. now_ms, '+inf') > 0
end

if not blocked then
  if not reading and ARGV[13] then
    -- A proposal too low grants nothing and keeps the writer's queue entry.
    local counter = redis.call('GET', fence_key)
    local stored = counter_value(counter)
    if stored and stored >= tonumber(ARGV[13]) then
      return {2, counter}
    end
  end
  if position then
    withdraw(q, entry)
    -- Also a list entry whose lease was lost (damaged data): it would hold readers back.
    redis.call('LREM', queue, 1, entry)
  end
  if not reading and ARGV[13] then
    return {1, (grant_proposed(lock, info, fence_key, token, ARGV[2], ARGV[3], ARGV[4],
                               ARGV[5], ARGV[6], now_us, ARGV[13]))}
  end
  if not reading then
    return {1, grant(lock, info, fence_key, token, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
                     now_us)}
  end
  if not current then
    -- Entries left from a read mode that ended (expired, or freed by force) are dead.
    redis.call('DEL', readers, rinfo)
    redis.call('SET', lock, READ_MODE)
  end
  -- The counter: the last write grant's token. Lost (a restart without persistence) or
  -- expired, it restarts from the server's clock in µs, which no earlier write token exceeds
  -- (every token is at most one above the clock's reading at its grant): a reader's token is
  -- never below an earlier write's.
  local fence = redis.call('GET', fence_key)
  if not fence then
    fence = string.format('%.0f', now_us)
    redis.call('SET', fence_key, fence, 'PX', ARGV[3])
  end
  redis.call('ZADD', readers, string.format('%.0f', now_ms + ttl), token)
  redis.call('HSET', rinfo, token, cjson.encode({host = ARGV[4], pid = ARGV[5], label = ARGV[6],
    since_ms = string.format('%.0f', now_ms), fence = fence}))
  fit_read_mode(lock, info, readers, rinfo, now_ms, true)
  return {1, tonumber(fence)}
end

if wait_ms > 0 and (fair or not reading or tonumber(ARGV[10]) > 0) then
  -- Outside fair mode a reader queues only to be handed the lock (see release.lua's hand_on):
  -- its entry holds nobody back, and one that cannot hear its hand-off retries when woken.
  local leased = redis.call('ZSCORE', leases, entry)
  enqueue(q, entry, now_ms, wait_ms, ARGV[10], ARGV[11], ARGV[4], ARGV[5], ARGV[6])
  if leased and not position then
    -- Damaged data (its list entry lost while its lease stayed; enqueue pushes only entries
    -- without a lease): back in line.
    redis.call('RPUSH', queue, entry)
  end
elseif reading and not fair and position then
  -- A reader that queued to be handed the lock and no longer does (it cannot hear its
  -- channel any more): its place and terms would hand it a grant it may never learn of.
  withdraw(q, entry)
end
-- The caller re-checks no later than the first waiter lease ends that holds someone back (a
-- dead waiter stops holding readers back then): a writer's, or in fair mode anyone's. Outside
-- fair mode a reader's place holds nobody back: counting it would have every waiter re-check
-- as each queued reader's lease ends (the first PURGE_BATCH leases are looked at).
local soonest
local ends = redis.call('ZRANGE', leases, 0, fair and 0 or PURGE_BATCH - 1, 'WITHSCORES')
for i = 1, #ends, 2 do
  if fair or string.sub(ends[i], 1, 2) == 'w:' then
    soonest = tonumber(ends[i + 1])
    break
  end
end
local plain = redis.call('ZRANGEBYSCORE', lock_waiters, '(' .. now_ms, '+inf', 'WITHSCORES',
                         'LIMIT', 0, 1)[2]
if plain and (not soonest or tonumber(plain) < soonest) then
  soonest = tonumber(plain)
end
-- Readers: the first 16 (by lease end), and the earliest one's lease as the time left: a
-- reader that died frees the lock then, if the others have left meanwhile (their releases move
-- the key's expiry; the waiter re-checks at this bound at the latest).
local holders, pttl = {}, redis.call('PTTL', lock)
if current == READ_MODE then
  local first = redis.call('ZRANGEBYSCORE', readers, '(' .. now_ms, '+inf', 'LIMIT', 0, 16)
  if #first > 0 then
    holders = redis.call('HMGET', rinfo, unpack(first))
    pttl = select(2, first_reader(readers, now_ms)) - now_ms
  end
end
return {0, pttl, redis.call('HGETALL', info), now_ms, soonest and soonest - now_ms or -1,
        holders, redis.call('GET', fence_key) or string.format('%.0f', now_us)}
