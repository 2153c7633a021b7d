-- Prelude of the acquire and release scripts of locks, semaphores and read-write locks (after
-- grant.lua; see scripts.rs): the wait queue and the hand-off of a freed lock to its head (a
-- semaphore's permits pass on through semaphore/queue.lua, a read-write lock's to writers
-- through rwlock/release.lua, built on the same pieces). A read-write lock's queue entries are
-- prefixed ('w:' or 'r:' and the token): never give them to hand_to, claim_of or announce,
-- which take entries for tokens.
--
-- The queue is three keys in the lock's slot: a list of waiter tokens in arrival order, a zset
-- of their waiter leases (token -> server ms when the entry lapses unless refreshed), and a
-- hash of the hand-off terms of waiters that accept one (token -> JSON host, pid, label,
-- claim ms, inbox: the channel its client listens on for hand-offs, '' for the lock's). `q`
-- is {list, leases, terms}. A hand-off goes to the waiter's inbox, so it reaches one client
-- however many wait; wake-ups for everyone stay on the lock's channel.
--
-- A wake-up names a waiter by the first 16 hex digits of its token: enough to tell waiters
-- apart, while the other 64 bits stay secret from anyone who can read the channel. A hand-off
-- message also carries a MAC over the whole token, so a user who can publish on the channel
-- (but not read the keys) cannot forge a grant.
--
-- Every step tolerates damaged queue data (an entry whose lease or terms were evicted or
-- corrupted): an error here would fail every lease the watchdog batched with this one.

-- The releasing client's inbox, set by a release that takes it (release.lua): hand-off messages
-- for that inbox go back in the reply (`for_releaser`) rather than by PUBLISH, and the client
-- delivers them to its own waiters at once. That saves a message, a pub/sub read and a task
-- wake-up per hand-off between tasks of one client. Every other script leaves it nil.
local releaser_inbox = nil
local for_releaser = {}

-- Sends a hand-off message to `to` (an inbox or a lock's channel).
local function send_to(to, message)
  if releaser_inbox and to == releaser_inbox then
    table.insert(for_releaser, message)
  else
    -- pcall: a user without channel permissions (Redis 7 ACLs) still hands off; the new
    -- holder then finds the grant at its next re-check.
    redis.pcall('PUBLISH', to, message)
  end
end

-- The number of holds a release script's ARGV (`per` values per hold) names, after taking the
-- releasing client's inbox from one more value at the end (a release of one hold may add it);
-- nil for any other count of values.
local function release_holds(per)
  local holds, extra = math.floor(#ARGV / per), #ARGV % per
  if extra > 1 or (extra == 1 and holds ~= 1) then
    return nil
  end
  if extra == 1 and ARGV[#ARGV] ~= '' then
    releaser_inbox = ARGV[#ARGV]
  end
  return holds
end

-- A release script's answer: its per-hold `results`, then the hand-off messages for the
-- releasing client's inbox.
local function with_handoffs(results)
  for _, message in ipairs(for_releaser) do
    table.insert(results, message)
  end
  return results
end

local function waiter_id(token)
  return string.sub(token, 1, 16)
end

-- Removes `token` from the queue; true if it was there.
local function withdraw(q, token)
  if redis.call('ZREM', q[2], token) == 0 then
    return false
  end
  -- Tokens are unique in the list: stop at the first match (lapsed entries sit near the head).
  redis.call('LREM', q[1], 1, token)
  redis.call('HDEL', q[3], token)
  return true
end

-- The head of the queue once waiters whose lease lapsed (dead, or gone without withdrawing)
-- have left it; nil if nobody is left.
-- At most PURGE_BATCH lapsed entries go per call, so one call after a mass crash stays short.
local PURGE_BATCH = 100
local function live_head(q, now_ms)
  for _, waiter in ipairs(redis.call('ZRANGEBYSCORE', q[2], '-inf', now_ms, 'LIMIT', 0,
                                     PURGE_BATCH)) do
    withdraw(q, waiter)
  end
  local head = redis.call('LINDEX', q[1], 0)
  -- A head without a lease (its zset entry was evicted) is not a waiter anyone can vouch for.
  for _ = 1, PURGE_BATCH do
    if not head or redis.call('ZSCORE', q[2], head) then
      return head
    end
    redis.call('LPOP', q[1])
    redis.call('HDEL', q[3], head)
    head = redis.call('LINDEX', q[1], 0)
  end
  return head
end

-- Puts `token` at the end of the queue (or keeps its place) for `lease` ms from `now_ms`, with
-- its hand-off terms (`claim` 0: it retries when woken instead; `extra`, optional: more fields
-- for the primitive, such as a semaphore waiter's permits), updated on every call (its inbox
-- may be subscribed only by a later attempt). The keys never outlive the longest waiter lease.
local function enqueue(q, token, now_ms, lease, claim, inbox, host, pid, label, extra)
  if not redis.call('ZSCORE', q[2], token) then
    redis.call('RPUSH', q[1], token)
  end
  if tonumber(claim) > 0 then
    -- stamped: this waiter reads a hand-off's grant time (see publish_handoff).
    local terms = {host = host, pid = pid, label = label, claim = claim, inbox = inbox,
                   stamped = true}
    for field, value in pairs(extra or {}) do
      terms[field] = value
    end
    redis.call('HSET', q[3], token, cjson.encode(terms))
  else
    -- It takes no hand-offs now (it cannot hear its channel): terms from an earlier attempt
    -- would hand it a grant it may never learn of.
    redis.call('HDEL', q[3], token)
  end
  redis.call('ZADD', q[2], now_ms + lease, token)
  for k = 1, 3 do
    if redis.call('PTTL', q[k]) < lease then
      redis.call('PEXPIRE', q[k], lease)
    end
  end
end

-- The shortest claim lease worth handing over: below it the new holder could not take the grant
-- safely (validity keeps 2 ms back) before it ends.
local MIN_CLAIM = 10

-- The hand-off terms `head` left when it queued, checked: nil when it left none (it retries
-- when woken) or they are damaged.
local function terms_of(q, head)
  local raw = redis.call('HGET', q[3], head)
  if not raw then
    return nil
  end
  local ok, terms = pcall(cjson.decode, raw)
  local claim = ok and type(terms) == 'table' and tonumber(terms.claim)
  -- A claim that is not a finite number of ms from 1 up (nan, inf, 15.5) would fail the SET
  -- PX of the grant, and with it every release batched with this one.
  if not claim or claim ~= claim or claim < 1 or claim == math.huge then
    return nil
  end
  terms.claim = math.floor(claim)
  return terms
end

-- Where a waiter with `terms` hears hand-offs: its client's inbox, else the lock's channel.
local function inbox_of(terms, channel)
  if type(terms.inbox) == 'string' and terms.inbox ~= '' then
    return terms.inbox
  end
  return channel
end

-- The claim lease the live waiter `head`, with `terms` (terms_of), may be handed a grant for:
-- its claim, cut to what is left of its waiter lease (a waiter that died just before its turn
-- holds the others up no longer than its queue entry would have). nil when it takes no
-- hand-offs (it is woken to retry instead) or too little of its waiter lease is left
-- (everyone is woken).
local function claim_of(q, head, terms, channel, now_us)
  local lease_end = tonumber(redis.call('ZSCORE', q[2], head))
  if not terms or not lease_end then
    redis.pcall('PUBLISH', channel, waiter_id(head))
    return nil
  end
  local claim = math.min(tonumber(terms.claim), lease_end - math.floor(now_us / 1000))
  if claim < MIN_CLAIM then
    redis.pcall('PUBLISH', channel, '')
    return nil
  end
  return claim
end

-- The hand-off message "<id> <fence> <claim ms> <mac> <next id or ->", and with `granted_text`
-- (the grant's time, this server's clock in ms) "... <granted ms>", its MAC covering that too.
local function handoff_message(token, fence_text, claim_text, next, granted_text)
  local proven = token .. ':' .. fence_text .. ':' .. claim_text
  if granted_text then
    proven = proven .. ':' .. granted_text
  end
  local message = table.concat({waiter_id(token), fence_text, claim_text,
                                string.sub(redis.sha1hex(proven), 1, 16),
                                next and waiter_id(next) or '-'}, ' ')
  if granted_text then
    message = message .. ' ' .. granted_text
  end
  return message
end

-- Sends the hand-off of `token` (with `terms`), granted with `fence` for `claim` ms at
-- server time `now_us`, to its inbox, and to where `next` (the token now first in line, with
-- `next_terms`, or nil) listens, if elsewhere (send_to: published, or for the releasing
-- client's own inbox put in the reply). The grant's time lets a waiter that queued long
-- ago count its claim lease from the grant rather than from its last attempt (see
-- engine/wait.rs); it is read before any key of this call is set (expiries count from each
-- command, or on some servers from the script's start, which the waiter allows 1 ms for), so
-- the claim never began before it. Only waiters that said they read it (`stamped` terms), on an
-- inbox of their own, get it: an older client takes the longer message for a stranger's and
-- would miss its grant, and on the lock's channel older clients would all wake.
local function publish_handoff(token, terms, fence, claim, channel, next, next_terms, now_us)
  local fence_text = us_text(fence)
  local claim_text = string.format('%.0f', claim)
  local to = inbox_of(terms, channel)
  local stamped = terms.stamped == true and to ~= channel
  local granted_text = stamped and ms_text(now_us) or nil
  local message = handoff_message(token, fence_text, claim_text, next, granted_text)
  send_to(to, message)
  local next_to = next_terms and inbox_of(next_terms, channel) or channel
  if next and next_to ~= to then
    -- The next in line reads only the claim (when to re-check): the message every version reads.
    if stamped then
      message = handoff_message(token, fence_text, claim_text, next, nil)
    end
    send_to(next_to, message)
  end
end

-- Tells `head` (with `terms`, withdrawn from the queue) that it was granted with `fence` for
-- `claim` ms at `now_us`: sends the hand-off (see publish_handoff), so the new holder
-- starts without a round trip of its own (it renews to its full TTL once it runs) and the next
-- waiter knows to re-check when the claim ends (if the new holder died, nobody else
-- publishes): it is told too, where it listens.
local function announce(q, head, terms, fence, claim, channel, now_us)
  local next = redis.call('LINDEX', q[1], 0)
  local next_terms = next and terms_of(q, next)
  publish_handoff(head, terms, fence, claim, channel, next, next_terms, now_us)
end

-- Hands the free `lock` to the live waiter `head` if it takes hand-offs: grants it for its
-- claim (see claim_of) and announces the grant. Otherwise wakes `head` to retry (everyone, if
-- its entry is about to lapse). Returns true when handed.
local function hand_to(lock, info, fence_key, q, head, channel, retention, now_us)
  local terms = terms_of(q, head)
  if terms and terms.permits then
    -- A semaphore waiter's terms (a lock and a semaphore of one name share the queue keys):
    -- it asks for permits, not the lock. Wake it instead.
    redis.pcall('PUBLISH', channel, waiter_id(head))
    return false
  end
  local claim = claim_of(q, head, terms, channel, now_us)
  if not claim then
    return false
  end
  withdraw(q, head)
  local fence = grant(lock, info, fence_key, head, claim, retention, tostring(terms.host or ''),
                      tostring(terms.pid or ''), tostring(terms.label or ''), now_us)
  announce(q, head, terms, fence, claim, channel, now_us)
  return true
end
