-- Release locks still held by their tokens and pass each on: to the live head of its wait
-- queue if that waiter takes hand-offs (granted in this same call, see handoff.lua), else by
-- a wake-up (the head's id, or empty: everyone retries). Never touches another owner's lock.
-- A token that does not hold its lock is withdrawn from the queue instead, so the same script
-- undoes a cancelled waiter (and passes on a lock that was handed to it meanwhile).
-- KEYS: per lock, 6 keys: lock, holder info, fencing counter, wait queue, waiter leases,
--       waiters' hand-off terms
-- ARGV: per lock, 4 values: token, wake-up channel, fencing counter retention ms, '1' for a
--       quiet release: no wake-up for everyone (the rollback of a Redlock attempt or a
--       multi-key lock's give-back, whose own waiter would wake itself and spin; a hand-off
--       to the queue's head is still told)
--       A release of one lock may add one more: the releasing client's inbox (`release()`:
--       see releaser_inbox in handoff.lua); and after it the client's host and pid, then 4
--       values per waiter of that client riding on this release (engine/riders.rs): its token,
--       waiter lease ms, claim lease ms and label. A release that frees the lock queues them
--       (behind everyone queued, or where they already are) before passing the lock on, so the
--       first may be handed it by this very call.
-- Returns one 1 (released) or 0 (was not ours) per lock, then the hand-off messages meant for
-- the releasing client's inbox, if it gave one.
-- Not Valkey 9's DELIFEQ or Redis 8.4's DELEX IFEQ: those compare and delete one key, and a
-- release must also drop the holder info, hand the lock to the queue's head or publish the
-- wake-up, atomically with it; the servers tested (Redis 7.0, Valkey 8.0) lack them anyway.
-- pcall: a key of another type (a semaphore's name reused for a lock, or the reverse) answers
-- "not ours" for that item instead of failing every lease batched with it.
local results = {}
local locks, riders = nil, {}
if #KEYS == 6 and #ARGV > 5 then
  -- One lock, its inbox, host, pid and riders: every rider is checked before anything is
  -- written.
  if (#ARGV - 7) % 4 ~= 0 or ARGV[5] == '' then
    return redis.error_reply('ERR dlock: a release with riders takes one lock, an inbox, a '
                             .. 'host, a pid and 4 arguments per rider')
  end
  for at = 8, #ARGV, 4 do
    local lease, claim = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
    -- Whole ms, up to about 35 years: what PEXPIRE and the hand-off's SET PX take.
    if not (lease and lease >= 1 and lease <= 2^40 and lease == math.floor(lease)
            and claim and claim >= 0 and claim <= 2^40 and claim == math.floor(claim)) then
      return redis.error_reply('ERR dlock: a rider needs a waiter lease of at least 1 ms and a '
                               .. 'claim lease')
    end
    table.insert(riders, at)
  end
  releaser_inbox = ARGV[5]
  locks = 1
else
  locks = release_holds(4)
end
if not locks then
  return redis.error_reply('ERR dlock: release takes 4 arguments per lock, or one lock and '
                           .. 'an inbox')
end
-- A hand-off's grant time must not be later than the time its claim lease counts from, which a
-- server may take as the call's start for every key it sets (see publish_handoff): a batch
-- reads the server's clock once, first; a single release reads it before any work that may
-- take long (a withdrawal scans the queue), and only if there is a queue to hand to.
local batch_now_us = locks > 1 and server_now_us() or nil
for i = 1, locks do
  local k = 6 * (i - 1)
  local lock, info, fence = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local q = {KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]}
  local token, channel, retention = ARGV[4 * i - 3], ARGV[4 * i - 2], ARGV[4 * i - 1]
  local quiet = ARGV[4 * i] == '1'
  local released = redis.pcall('GET', lock) == token
  local now_us = batch_now_us or (not released and server_now_us()) or nil
  local withdrew = not released and withdraw(q, token)
  if released and #riders > 0 then
    now_us = now_us or server_now_us()
    local now_ms = math.floor(now_us / 1000)
    for _, at in ipairs(riders) do
      enqueue(q, ARGV[at], now_ms, tonumber(ARGV[at + 1]), ARGV[at + 2], releaser_inbox,
              ARGV[6], ARGV[7], ARGV[at + 3])
    end
  end
  if released or (withdrew and redis.call('EXISTS', lock) == 0) then
    -- Lean when nobody queues: one LINDEX, no clock read.
    local head = redis.call('LINDEX', q[1], 0)
    if head then
      now_us = now_us or server_now_us()
      head = live_head(q, math.floor(now_us / 1000))
    end
    if not (head and hand_to(lock, info, fence, q, head, channel, retention, now_us)) then
      redis.call('DEL', lock, info)
      if not head and not quiet then
        -- pcall: a user without channel permissions (Redis 7 ACLs) still releases; its
        -- waiters then rely on their timed re-checks.
        redis.pcall('PUBLISH', channel, '')
      end
    end
  elseif withdrew and not quiet and redis.pcall('GET', lock) == 'dlock:read-mode' then
    -- A waiter that gave up held a read-write lock's new readers back (rwlock/acquire.lua):
    -- they may go now.
    redis.pcall('PUBLISH', channel, '')
  end
  results[i] = released and 1 or 0
end
return with_handoffs(results)
