-- Take several locks at once, all or none. Atomic: every key is in one slot (one Redis, or
-- members that share a Redis Cluster hash slot).
-- KEYS: per member, 3 keys: lock, holder info, fencing counter
-- ARGV: 1 token, 2 ttl ms, 3 counter retention ms, 4 host, 5 pid, 6 label
-- Returns {1, fence per member} when every member was free, or already held by this token (a
-- retry whose reply was lost), and is now held by it; otherwise nothing is written and the
-- answer is {0, pttl, holder info fields, server ms, the busy member's index from 0}.
-- Each member is a plain lock (its key holds the token): plain locks, `SET NX` from other
-- tools, and a read-write lock in read mode of a member's name are all busy here.
local now_us = server_now_us()
local n = #KEYS / 3
for i = 1, n do
  local lock = KEYS[3 * i - 2]
  -- Another type (a semaphore of this name): Redis's WRONGTYPE, as for a plain lock.
  local current = redis.call('GET', lock)
  if current and current ~= ARGV[1] then
    return busy(lock, KEYS[3 * i - 1], math.floor(now_us / 1000), i - 1)
  end
end
local granted = {1}
for i = 1, n do
  local lock, info, fence = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  if redis.call('GET', lock) == ARGV[1] then
    granted[i + 1] = regrant(lock, info, ARGV[2])
  else
    granted[i + 1] = grant(lock, info, fence, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
                           ARGV[6], now_us)
  end
end
return granted
