-- Prelude of every read-write lock script (prepended at compile time, see scripts.rs): how read
-- mode is kept, in one place.
--
-- The name's key is a string, as for a plain lock: the writer's token while a writer holds it,
-- READ_MODE while readers do. So a plain lock (or `SET NX` by another tool) and a read-write lock
-- of one name exclude each other, and a plain lock's scripts never touch readers. Readers live
-- in a zset (token -> lease end, server ms) and a hash (token -> holder JSON). The key's expiry
-- is kept at the latest reader's lease end: it frees itself when the last reader's lease runs
-- out, and a reader entry without READ_MODE on the key is dead (expired, or freed by a forced
-- release).

-- Never a token (those are 32 hex digits).
local READ_MODE = 'dlock:read-mode'

-- The server's clock in milliseconds.
local function server_now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Drop readers whose leases ended at `now_ms`.
local function purge_readers(readers, rinfo, now_ms)
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', readers, '-inf', now_ms)) do
    redis.call('ZREM', readers, dead)
    redis.call('HDEL', rinfo, dead)
  end
end

-- Make the read-mode keys (the name, holder info, readers, readers' info) end with the latest
-- live reader's lease; with `name_first`, also record the earliest live reader and the number of
-- readers in the holder info (what a plain lock's busy answer and `status` show). Returns false
-- when no live reader is left: then every read-mode key is deleted and the lock is free.
local function fit_read_mode(lock, info, readers, rinfo, name_first)
  local last = redis.call('ZRANGE', readers, -1, -1, 'WITHSCORES')
  if not last[2] then
    redis.call('DEL', lock, info, readers, rinfo)
    return false
  end
  if name_first then
    local first = redis.call('ZRANGE', readers, 0, 0)[1]
    local json = redis.call('HGET', rinfo, first)
    local holder = json and cjson.decode(json) or {}
    redis.call('HSET', info, 'host', holder.host or '?', 'pid', holder.pid or '',
               'label', holder.label or '', 'since_ms', holder.since_ms or '0',
               'fence', holder.fence or '0', 'readers', redis.call('ZCARD', readers))
  end
  for _, key in ipairs({lock, info, readers, rinfo}) do
    redis.call('PEXPIREAT', key, last[2])
  end
  return true
end
