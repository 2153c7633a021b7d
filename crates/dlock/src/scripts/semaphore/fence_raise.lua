-- Redlock fencing write-back for a permit: raise a node's fencing counter to at least the
-- grant's token, so any later grant whose majority includes this node gets a larger one, and
-- record that token as the permit's fence on this node.
-- KEYS: 1 fencing counter, 2 semaphore hash, 3 holders (zset)
-- ARGV: 1 the grant's token (fencing), 2 counter retention ms, 3 the holder token
-- Returns 1 if the permit on this node is still ours (its lease runs past the server's now;
-- the write-back counts), else 0. The counter is raised either way, and never lowered.
-- A damaged counter (not a number, or NaN) is raised too, rather than failing the call.
local current = tonumber(redis.call('GET', KEYS[1]) or '') or 0
if not (current >= tonumber(ARGV[1])) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease_end = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[3]) or '')
local json = redis.call('HGET', KEYS[2], ARGV[3])
if not (lease_end and lease_end > now_ms and json) then
  return 0
end
-- Two permits of one semaphore may both win on Redlock (unlike a lock's grants), and each
-- takes the largest fence of its own masters: they could end up with the same token. Refuse
-- a fence another live holder here already has; two grants' masters always share one, so one
-- of them fails its write-back and retries with a fresh token.
local live = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now_ms, '+inf')
for _, other in ipairs(live) do
  local other_json = other ~= ARGV[3] and redis.call('HGET', KEYS[2], other)
  if other_json and cjson.decode(other_json).fence == ARGV[1] then
    return 0
  end
end
local info = cjson.decode(json)
-- Kept as the caller's text: a fence is an integer too large for '%.14g'.
info.fence = ARGV[1]
redis.call('HSET', KEYS[2], ARGV[3], cjson.encode(info))
return 1
