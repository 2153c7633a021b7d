-- Release read-write lock holds still held by their tokens, and pass the lock on when it is
-- free: to the queue's head if it takes hand-offs (granted in this same call, see hand_on
-- below), else by waking every waiter. Never touches another holder's hold. A token that is
-- not a holder (any more) is withdrawn from the wait queue instead, so the same script undoes a
-- cancelled waiter. grant.lua, handoff.lua and shared.lua are prepended.
-- KEYS: per hold, 9 keys: the name, holder info, readers, readers' info, wait queue, waiter
--       leases, fencing counter, queued waiters' hand-off terms, the plain lock's waiter
--       leases (a plain lock of this name waiting)
-- ARGV: per hold, 4 values: token, 'read' | 'write' (with ':quiet' for a quiet release: no
--       wake-up for everyone, for the rollback of a Redlock attempt, whose own waiter would
--       wake itself and spin), wake-up channel, fencing counter retention ms. A release of one
--       hold may add one more: the releasing client's inbox (see releaser_inbox in
--       handoff.lua).
-- Returns one 1 (released: the hold was still ours) or 0 (not ours any more) per hold, then
-- the hand-off messages for the releasing client's inbox, if it gave one.
-- Wake-ups publish '' (every waiter retries): when the lock became free and was not handed,
-- when the read mode's end came sooner, when a queued waiter left (a writer leaving the queue
-- may let readers in), or when readers were handed the lock and a reader that could not be is
-- next in line (it may come in too).
-- pcall: a key of another type (a semaphore of this name) answers "not ours" for that item
-- instead of failing every hold batched with it.

-- The wait queue's entries are 'w:' or 'r:' and the token, kept as handoff.lua keeps a lock's
-- queue (`q`: list, leases, hand-off terms, by entry).

-- The claim lease the live queue entry `head` may be handed the lock for: its terms' claim, cut
-- to what is left of its queue entry; nil when it takes no hand-offs (no or damaged terms, a
-- semaphore's) or too little is left.
local function rw_claim(q, head, now_ms)
  local terms = terms_of(q, head)
  local lease_end = tonumber(redis.call('ZSCORE', q[2], head))
  if not terms or terms.permits or not lease_end then
    return nil
  end
  local claim = math.min(tonumber(terms.claim), lease_end - now_ms)
  if claim < MIN_CLAIM then
    return nil
  end
  return claim, terms
end

-- Grants the free lock's write side to the writer entry `head` for `claim` ms and tells it
-- (and the next in line) as a lock's hand-off does.
local function hand_to_writer(lock, info, fence_key, q, head, claim, terms, channel, retention,
                              now_us)
  withdraw(q, head)
  local writer = string.sub(head, 3)
  local fence = grant(lock, info, fence_key, writer, claim, retention,
                      tostring(terms.host or ''), tostring(terms.pid or ''),
                      tostring(terms.label or ''), now_us)
  local next = redis.call('LINDEX', q[1], 0)
  local next_terms = next and terms_of(q, next)
  publish_handoff(writer, terms, fence, claim, channel, next and string.sub(next, 3),
                  next_terms, now_us)
end

-- How many queued readers one release hands the lock to at most (the rest are woken), so one
-- call stays short however many wait.
local READER_BATCH = 64

-- Grants the free lock's read side to the run of reader entries at the head of the queue that
-- take hand-offs (at most READER_BATCH), each for its claim, all with one fresh fencing token:
-- above every earlier grant's, so each reader can tell this hand-off from a late message of an
-- earlier one, and below every later write's (readers who join this read period read the same
-- counter). Tells each reader; the next in line hears of the longest claim. Returns false when
-- the head takes no hand-off (nothing granted).
local function hand_to_readers(lock, info, fence_key, readers, rinfo, q, channel, retention,
                               now_us)
  local now_ms = math.floor(now_us / 1000)
  local handed = {}
  local head = redis.call('LINDEX', q[1], 0)
  while head and string.sub(head, 1, 2) == 'r:' and #handed < READER_BATCH do
    local claim, terms = rw_claim(q, head, now_ms)
    if not claim then
      break
    end
    withdraw(q, head)
    handed[#handed + 1] = {string.sub(head, 3), terms, claim}
    head = live_head(q, now_ms)
  end
  if #handed == 0 then
    return false
  end
  local fence, fence_text = next_fence(fence_key, retention, now_us)
  -- Entries left from a read mode that ended (expired, or freed by force) are dead.
  redis.call('DEL', readers, rinfo)
  redis.call('SET', lock, READ_MODE)
  local longest = 1
  for i, reader in ipairs(handed) do
    local token, terms, claim = reader[1], reader[2], reader[3]
    redis.call('ZADD', readers, string.format('%.0f', now_ms + claim), token)
    redis.call('HSET', rinfo, token, cjson.encode({host = tostring(terms.host or ''),
      pid = tostring(terms.pid or ''), label = tostring(terms.label or ''),
      since_ms = ms_text(now_us), fence = fence_text}))
    if claim > handed[longest][3] then
      longest = i
    end
  end
  fit_read_mode(lock, info, readers, rinfo, now_ms, true)
  local next = head and string.sub(head, 3)
  local next_terms = head and terms_of(q, head)
  for i, reader in ipairs(handed) do
    if i ~= longest then
      publish_handoff(reader[1], reader[2], fence, reader[3], channel, nil, nil, now_us)
    end
  end
  local last = handed[longest]
  publish_handoff(last[1], last[2], fence, last[3], channel, next, next_terms, now_us)
  if head and string.sub(head, 1, 2) == 'r:' then
    -- A reader next in line was not handed the lock (no hand-off terms, too little of its
    -- entry left, or past the batch): it may come in now.
    redis.pcall('PUBLISH', channel, '')
  end
  return true
end

-- Hands the free lock to the live head of the queue if it takes hand-offs: a writer gets the
-- write side for its claim lease, readers at the head the read side (hand_to_writer,
-- hand_to_readers). Returns true when handed; otherwise the caller wakes everyone.
local function hand_on(lock, info, fence_key, readers, rinfo, q, lock_waiters, channel,
                       retention, now_us)
  local now_ms = math.floor(now_us / 1000)
  if redis.call('ZCOUNT', lock_waiters, '(' .. now_ms, '+inf') > 0 then
    -- A plain lock of this name waits too (its own queue, see handoff.lua): handing on to rw
    -- waiters would keep the name from it for as long as they keep coming. Wake everyone.
    return false
  end
  local head = live_head(q, now_ms)
  if head and string.sub(head, 1, 2) == 'r:' then
    return hand_to_readers(lock, info, fence_key, readers, rinfo, q, channel, retention, now_us)
  end
  if not head then
    return false
  end
  local claim, terms = rw_claim(q, head, now_ms)
  if not claim then
    return false
  end
  hand_to_writer(lock, info, fence_key, q, head, claim, terms, channel, retention, now_us)
  return true
end

local now_us = server_now_us()
local now_ms = math.floor(now_us / 1000)
local holds = release_holds(4)
if not holds then
  return redis.error_reply('ERR dlock: release takes 4 arguments per hold, or one hold and an '
                           .. 'inbox')
end
local results = {}
for i = 1, holds do
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
  -- A writer's place holds new readers back, so its leaving may let them in; a reader's holds
  -- back only (in fair mode) a writer behind it, which a free lock then lets in.
  local withdrew = withdraw(q, (reading and 'r:' or 'w:') .. token)
                   and (not reading or redis.call('EXISTS', lock) == 0)
  local lock_waiters = KEYS[k + 9]
  if freed and hand_on(lock, info, fence_key, readers, rinfo, q, lock_waiters, channel,
                       retention, now_us) then
    freed = false
  end
  if (freed or withdrew or sooner) and not quiet then
    -- pcall: a user without channel permissions (Redis 7 ACLs) still releases; waiters then
    -- rely on their timed re-checks.
    redis.pcall('PUBLISH', channel, '')
  end
  results[i] = released and 1 or 0
end
return with_handoffs(results)
