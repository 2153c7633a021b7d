-- Take `n` permits of a counting semaphore, each grant with its own lease and fencing token,
-- or (waiting) join its wait queue. Atomic; grant.lua, handoff.lua and queue.lua are
-- prepended.
-- KEYS: 1 holders (zset: holder token -> lease end, server ms), 2 semaphore hash ('limit' ->
--       the stored limit, holder token -> holder info json), 3 fencing counter, 4 wait queue
--       (list), 5 waiter leases (zset: waiter token -> end of its queue entry, server ms),
--       6 waiters' hand-off terms (hash, see handoff.lua)
-- ARGV: 1 token, 2 permits wanted (n >= 1), 3 limit, 4 ttl ms, 5 fencing counter retention
--       ms, 6 host, 7 pid, 8 label, 9 waiter lease ms (0: do not queue), 10 wake-up channel,
--       11 'fair' (permits go out in queue order) or 'plain' (to whoever asks while they
--       fit), 12 claim lease ms of a hand-off (0: when permits are freed, wake us instead),
--       13 the channel to send a hand-off to ('': the wake-up channel)
-- Returns
--   {1, fence} granted, or this very token already holds a live permit (a retry whose first
--              reply was lost, or a hand-off: its lease restarts at ttl, it keeps the permits
--              first granted, and its grant's fence comes back, whatever limit the retry
--              names, so a permit is never left held without its owner knowing);
--   {-1, stored limit} the semaphore is stored with another limit; nothing was granted or
--              queued (only dead holders and waiters were purged);
--   {0, ms until the earliest live holder's lease ends or -1, {holder info json with
--    "expires_in_ms", ...} by lease end, server time ms, fair mode: ms until the lease of the
--    waiter just ahead ends, else -1, limit, the fencing counter (a hand-off with a token no
--    larger was made before this answer)} busy.
-- Holder info json: every value a string: host, pid, label, since_ms, fence, permits. Tokens
-- never leave the script (a token is what releases a permit).
-- Raises an error when n is not a whole number in 1..limit: such a caller could never be
-- granted, and as a fair queue's head it would stall every waiter behind it.
local now_us = server_now_us()
local now_ms = math.floor(now_us / 1000)
local holders, sem, fence_key, queue, leases = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local q = {queue, leases, KEYS[6]}
local token, ttl, channel = ARGV[1], ARGV[4], ARGV[10]
local wanted, limit, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[9])

if not (wanted and limit and lease and wanted == math.floor(wanted)
        and limit == math.floor(limit) and wanted >= 1 and wanted <= limit) then
  return redis.error_reply('ERR dlock semaphore: permits must be a whole number in 1..limit, '
                           .. 'got ' .. ARGV[2] .. ' of ' .. ARGV[3] .. ' (waiter lease '
                           .. ARGV[9] .. ')')
end

local fair = ARGV[11] == 'fair'

-- Never shorten a key's life: it must outlast its longest lease.
local function keep(key, ms)
  if redis.call('PTTL', key) < tonumber(ms) then
    redis.call('PEXPIRE', key, ms)
  end
end

-- Dead holders (lease over) give their permits back; dead waiters leave the queue (at most
-- PURGE_BATCH per call, so one call after a mass crash stays short).
local freed = 0
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', holders, '-inf', now_ms)) do
  redis.call('ZREM', holders, dead)
  redis.call('HDEL', sem, dead)
  freed = freed + 1
end
local purged = freed
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms, 'LIMIT', 0,
                                 PURGE_BATCH)) do
  withdraw(q, dead)
  purged = purged + 1
end
if lease == 0 then
  -- Not waiting in the queue this time (try_acquire, or a waiter that cannot hear its channel
  -- now): an entry from an earlier attempt would be handed permits it may never learn of.
  withdraw(q, token)
end
-- The stored limit lives as long as the semaphore has holders or waiters.
if purged > 0 and redis.call('ZCARD', holders) == 0 and redis.call('LLEN', queue) == 0 then
  redis.call('DEL', holders, sem)
elseif redis.call('ZCARD', holders) == 0 and redis.call('HLEN', sem) > 1 then
  -- No holder left, yet holder info remains: holders whose zset expired with their lease
  -- (never purged one by one) while waiters kept the hash alive. Keep only the limit.
  for _, field in ipairs(redis.call('HKEYS', sem)) do
    if field ~= 'limit' then
      redis.call('HDEL', sem, field)
    end
  end
end

local stored = tonumber(redis.call('HGET', sem, 'limit') or '')
local capacity = stored or limit

-- Permits in use, and the live holders' info (by lease end) for a busy answer.
local used = 0
local infos = {}
local live = redis.call('ZRANGE', holders, 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  local ok, info = pcall(cjson.decode, redis.call('HGET', sem, live[i]) or '')
  if not ok or type(info) ~= 'table' then
    info = {}
  end
  -- A holder without info (never written by these scripts), or with damaged info, still
  -- holds at least one permit.
  used = used + (permits_of(info) or 1)
  info.expires_in_ms = string.format('%.0f', tonumber(live[i + 1]) - now_ms)
  infos[#infos + 1] = cjson.encode(info)
end

-- When permits are free and `moved` (the queue moved up, or a purge gave permits back): pass
-- them on to queued waiters (see queue.lua), never to the caller itself (it is answered right
-- now), and when some are left that a purge freed, wake everyone (waiters that do not queue,
-- or were passed over, may fit).
local function wake(moved)
  if used >= capacity or not moved then
    return
  end
  local s = {holders = holders, sem = sem, fence = fence_key, q = q, channel = channel,
             retention = ARGV[5], now_us = now_us, except = token}
  if pass_on(s) and freed > 0 then
    -- pcall: a user without channel permissions (Redis 7 ACLs) still acquires; waiters then
    -- rely on their timed re-checks.
    redis.pcall('PUBLISH', channel, '')
  end
end

local expiry = string.format('%.0f', now_ms + tonumber(ttl))
if redis.call('ZSCORE', holders, token) then
  withdraw(q, token)
  redis.call('ZADD', holders, expiry, token)
  keep(holders, ttl)
  keep(sem, ttl)
  wake(purged > 0)
  local info = redis.call('HGET', sem, token)
  return {1, info and tonumber(cjson.decode(info).fence) or 0}
end

if capacity ~= limit then
  -- A caller naming another limit gives up: it leaves the queue, and if it was the head the
  -- next waiter is woken now rather than after its waiter lease.
  local was_head = redis.call('LINDEX', queue, 0) == token
  withdraw(q, token)
  wake(purged > 0 or was_head)
  return {-1, stored}
end

local head = redis.call('LINDEX', queue, 0)
if used + wanted <= limit and (not fair or not head or head == token) then
  -- Granted waiters leave the queue (in fair mode, the caller is its head).
  withdraw(q, token)
  redis.call('ZADD', holders, expiry, token)
  local fence, fence_text = next_fence(fence_key, ARGV[5], now_us)
  redis.call('HSET', sem, token, cjson.encode({
    host = ARGV[6], pid = ARGV[7], label = ARGV[8], since_ms = ms_text(now_us),
    fence = fence_text, permits = string.format('%.0f', wanted)}))
  if not stored then
    redis.call('HSET', sem, 'limit', string.format('%.0f', limit))
  end
  keep(holders, ttl)
  keep(sem, ttl)
  used = used + wanted
  -- Fair mode: permits left over may fit the next waiter, which does not know yet.
  wake(fair or purged > 0)
  return {1, fence}
end
wake(purged > 0)

if lease > 0 then
  -- A waiter's terms say how many permits a hand-off must grant it, and whether permits it
  -- cannot use yet may go to others (plain) or wait for it (fair).
  enqueue(q, token, now_ms, lease, ARGV[12], ARGV[13], ARGV[6], ARGV[7], ARGV[8],
          {permits = string.format('%.0f', wanted), fair = fair})
  -- The stored limit lives at least as long as the queue.
  if not stored then
    redis.call('HSET', sem, 'limit', string.format('%.0f', limit))
  end
  keep(sem, ARGV[9])
end

local earliest = -1
if #live > 0 then
  earliest = tonumber(live[2]) - now_ms
end
-- Fair: the caller re-checks no later than the lease of the waiter just ahead of it ends (for
-- a caller not in the queue, the last waiter's), as in the lock's acquire.lua.
local ahead_left = -1
if fair then
  -- (From the tail, and only for a queued caller: see the lock's acquire.lua.)
  local place = redis.call('ZSCORE', leases, token)
                and redis.call('LPOS', queue, token, 'RANK', -1)
  local ahead
  if place then
    ahead = place > 0 and redis.call('LINDEX', queue, place - 1) or nil
  else
    ahead = redis.call('LINDEX', queue, -1)
  end
  local ahead_end = ahead and redis.call('ZSCORE', leases, ahead)
  if ahead_end then
    ahead_left = tonumber(ahead_end) - now_ms
  end
end
-- Without a counter (lost, evicted), the clock: any earlier hand-off's token is below it.
return {0, earliest, infos, now_ms, ahead_left, limit,
        redis.call('GET', fence_key) or string.format('%.0f', now_us)}
