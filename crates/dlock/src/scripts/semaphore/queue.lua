-- Prelude of the semaphore's acquire and release scripts (after grant.lua and handoff.lua; see
-- scripts.rs): how permits that are free pass on to queued waiters.
--
-- `s` describes one semaphore: holders (zset), sem (hash), fence (counter key), q (the queue
-- keys, as in handoff.lua), channel (wake-ups), retention (fencing counter, ms), now_us (the
-- server's clock) and except (a token pass_on never hands to: the caller of acquire.lua, who
-- is answered directly).

-- The most waiters one call looks at: one call stays short however many permits are free
-- (set_limit can raise the limit by any amount).
local HANDOFF_BATCH = 64

-- Permits held by live holders (a holder without info, or with damaged info, holds one).
local function permits_used(s)
  local used = 0
  local after = '(' .. string.format('%.0f', math.floor(s.now_us / 1000))
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', s.holders, after, '+inf')) do
    local ok, info = pcall(cjson.decode, redis.call('HGET', s.sem, holder) or '')
    local n = ok and type(info) == 'table' and tonumber(info.permits)
    used = used + ((n and n >= 1) and n or 1)
  end
  return used
end

-- The permits `terms` ask for: a whole number from 1 up, else nil (damaged terms, or a lock
-- waiter's: the queue keys are shared with a lock of the same name).
local function permits_of(terms)
  local n = terms and tonumber(terms.permits)
  if n and n >= 1 and n == math.floor(n) then
    return n
  end
  return nil
end

-- Grants `waiter` (with `terms`) `n` permits for `claim` ms and announces it.
local function hand_permits(s, waiter, terms, n, claim)
  local now_ms = math.floor(s.now_us / 1000)
  withdraw(s.q, waiter)
  redis.call('ZADD', s.holders, string.format('%.0f', now_ms + claim), waiter)
  local fence, fence_text = next_fence(s.fence, s.retention, s.now_us)
  redis.call('HSET', s.sem, waiter, cjson.encode({
    host = tostring(terms.host or ''), pid = tostring(terms.pid or ''),
    label = tostring(terms.label or ''), since_ms = ms_text(s.now_us),
    fence = fence_text, permits = string.format('%.0f', n)}))
  for _, key in ipairs({s.holders, s.sem}) do
    if redis.call('PTTL', key) < claim then
      redis.call('PEXPIRE', key, claim)
    end
  end
  announce(s.q, waiter, terms, fence, claim, s.channel, s.now_us)
end

-- Passes free permits on to queued waiters that take hand-offs, in queue order: in fair mode
-- to the head while its permits fit, stopping at the first waiter not handed its permits (a
-- head that does not fit keeps them free for itself; a head without hand-off terms is woken to
-- retry); outside fair mode to every waiter whose permits fit, passing over the others. At
-- most HANDOFF_BATCH waiters are looked at. Returns true when permits are left free that no
-- queued waiter took while others may take them (waiters passed over, or that do not queue):
-- the caller decides whether to wake everyone.
local function pass_on(s)
  if not redis.call('LINDEX', s.q[1], 0)
     or not live_head(s.q, math.floor(s.now_us / 1000)) then
    return true
  end
  local limit = tonumber(redis.call('HGET', s.sem, 'limit') or '')
  if not limit then
    -- Waiters without a stored limit (damaged data): let them all retry.
    return true
  end
  local used = permits_used(s)
  for _, waiter in ipairs(redis.call('LRANGE', s.q[1], 0, HANDOFF_BATCH - 1)) do
    if used >= limit then
      return false
    end
    local terms = terms_of(s.q, waiter)
    local wanted = permits_of(terms)
    local claim
    if waiter == s.except then
      -- The caller, answered directly: it waits its turn as any waiter.
      wanted = nil
    elseif wanted and used + wanted <= limit then
      -- nil when too little of its waiter lease is left (then everyone was woken).
      claim = claim_of(s.q, waiter, terms, s.channel, s.now_us)
      if claim then
        hand_permits(s, waiter, terms, wanted, claim)
        used = used + wanted
      end
    elseif not wanted and redis.call('LINDEX', s.q[1], 0) == waiter then
      -- The head takes no hand-offs (it cannot hear its channel, or waits without hand-off):
      -- wake it to retry.
      redis.pcall('PUBLISH', s.channel, waiter_id(waiter))
    end
    if not claim and not (terms and terms.fair == false) then
      return false
    end
  end
  return used < limit
end
