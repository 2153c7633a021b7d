-- Prelude of the lock's acquire and release scripts (after grant.lua; see scripts.rs): the wait
-- queue and the hand-off of a freed lock to its head.
--
-- The queue is three keys in the lock's slot: a list of waiter tokens in arrival order, a zset
-- of their waiter leases (token -> server ms when the entry lapses unless refreshed), and a
-- hash of the hand-off terms of waiters that accept one (token -> JSON host, pid, label,
-- claim ms). `q` is {list, leases, terms}.
--
-- A wake-up names a waiter by the first 16 hex digits of its token: enough to tell waiters
-- apart, while the other 64 bits stay secret from anyone who can read the channel.

local function waiter_id(token)
  return string.sub(token, 1, 16)
end

-- Removes `token` from the queue; true if it was there.
local function withdraw(q, token)
  if redis.call('ZREM', q[2], token) == 0 then
    return false
  end
  redis.call('LREM', q[1], 0, token)
  redis.call('HDEL', q[3], token)
  return true
end

-- The head of the queue once waiters whose lease lapsed (dead, or gone without withdrawing)
-- have left it; nil if nobody is left.
local function live_head(q, now_ms)
  for _, waiter in ipairs(redis.call('ZRANGEBYSCORE', q[2], '-inf', now_ms)) do
    withdraw(q, waiter)
  end
  return redis.call('LINDEX', q[1], 0)
end

-- Puts `token` at the end of the queue (or keeps its place) for `lease` ms from `now_ms`, with
-- its hand-off terms (`claim` 0: it retries when woken instead). The keys never outlive the
-- longest waiter lease.
local function enqueue(q, token, now_ms, lease, claim, host, pid, label)
  if not redis.call('ZSCORE', q[2], token) then
    redis.call('RPUSH', q[1], token)
    if tonumber(claim) > 0 then
      redis.call('HSET', q[3], token,
                 cjson.encode({host = host, pid = pid, label = label, claim = claim}))
    end
  end
  redis.call('ZADD', q[2], now_ms + lease, token)
  for k = 1, 3 do
    if redis.call('PTTL', q[k]) < lease then
      redis.call('PEXPIRE', q[k], lease)
    end
  end
end

-- Hands the free `lock` to the live waiter `head` if it takes hand-offs: grants it for the
-- waiter's claim lease, cut to what is left of its waiter lease (a waiter that died just
-- before its turn holds the others up no longer than its queue entry would have), and
-- publishes "<id> <fence> <claim ms>", so the new holder starts without a round trip of its
-- own; it renews to its full TTL once it runs. Otherwise wakes `head` to retry.
-- Returns true when handed.
local function hand_to(lock, info, fence_key, q, head, channel, retention, now_us)
  local terms = redis.call('HGET', q[3], head)
  if not terms then
    redis.pcall('PUBLISH', channel, waiter_id(head))
    return false
  end
  terms = cjson.decode(terms)
  local lease_left = tonumber(redis.call('ZSCORE', q[2], head)) - math.floor(now_us / 1000)
  local claim = math.max(1, math.min(tonumber(terms.claim), lease_left))
  withdraw(q, head)
  local fence = grant(lock, info, fence_key, head, claim, retention, terms.host, terms.pid,
                      terms.label, now_us)
  -- pcall: a user without channel permissions (Redis 7 ACLs) still hands off; the new holder
  -- then finds the grant at its next re-check.
  redis.pcall('PUBLISH', channel,
              waiter_id(head) .. ' ' .. string.format('%.0f', fence) .. ' ' .. claim)
  return true
end
