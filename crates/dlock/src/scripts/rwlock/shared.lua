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

-- How many lapsed entries one call purges at most (the rest go in later calls), so one script
-- never stalls Redis over a crowd of dead readers or waiters.
local PURGE_BATCH = 100

-- Drop readers whose leases ended at `now_ms`.
local function purge_readers(readers, rinfo, now_ms)
  local dead = redis.call('ZRANGEBYSCORE', readers, '-inf', now_ms, 'LIMIT', 0, PURGE_BATCH)
  for _, token in ipairs(dead) do
    redis.call('ZREM', readers, token)
    redis.call('HDEL', rinfo, token)
  end
end

-- A reader's holder info, decoded; {} when missing or damaged (a damaged entry must not fail
-- every hold batched with it).
local function reader_holder(rinfo, token)
  local ok, holder = pcall(cjson.decode, redis.call('HGET', rinfo, token) or '')
  return (ok and type(holder) == 'table') and holder or {}
end

-- The earliest live reader and its lease end (server ms), or nil.
local function first_reader(readers, now_ms)
  local first = redis.call('ZRANGEBYSCORE', readers, '(' .. now_ms, '+inf', 'WITHSCORES',
                           'LIMIT', 0, 1)
  return first[1], tonumber(first[2])
end

-- Make the read-mode keys (the name, holder info, readers, readers' info) end with the latest
-- live reader's lease; with `name_first`, also record the earliest live reader and the number of
-- readers in the holder info (what a plain lock's busy answer and `status` show). Returns false
-- when no live reader is left: then every read-mode key is deleted and the lock is free.
local function fit_read_mode(lock, info, readers, rinfo, now_ms, name_first)
  local last = tonumber(redis.call('ZRANGE', readers, -1, -1, 'WITHSCORES')[2])
  if not last or last <= now_ms then
    redis.call('DEL', lock, info, readers, rinfo)
    return false
  end
  if name_first then
    local holder = reader_holder(rinfo, first_reader(readers, now_ms))
    redis.call('HSET', info, 'host', holder.host or '?', 'pid', holder.pid or '',
               'label', holder.label or '', 'since_ms', holder.since_ms or '0',
               'fence', holder.fence or '0',
               'readers', redis.call('ZCOUNT', readers, '(' .. now_ms, '+inf'))
  end
  for _, key in ipairs({lock, info, readers, rinfo}) do
    redis.call('PEXPIREAT', key, string.format('%.0f', last))
  end
  return true
end
