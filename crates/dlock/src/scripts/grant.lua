-- Prelude shared by every acquire script (prepended at compile time, see scripts.rs): one
-- place for how a lock is granted and how its fencing token is made.

-- The server's last clock reading (server_now_us) in microseconds, and the same as text.
local clock_us, clock_text = nil, nil

-- A TIME reply ({seconds, microseconds}, both text) as microseconds in digits: the seconds,
-- then the microseconds padded to six.
local function clock_digits(time)
  return time[1] .. string.sub('00000' .. time[2], -6)
end

-- The server's clock in microseconds.
local function server_now_us()
  local time = redis.call('TIME')
  clock_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
  clock_text = clock_digits(time)
  return clock_us
end

-- `us` (a whole number, such as a time in microseconds or a fencing token) as digits. With
-- '%.0f' where it must be formatted: Lua numbers are doubles, and the default '%.14g' would
-- round a 16-digit value. The clock's last reading, by far the most common value here, comes
-- from TIME's digits instead: formatting a double that way costs more server time than a
-- nested command (docs/benchmarks.md, "Server time per lock cycle").
local function us_text(us)
  if us == clock_us then
    return clock_text
  end
  return string.format('%.0f', us)
end

-- The whole milliseconds in `us` microseconds, as digits (see us_text).
local function ms_text(us)
  if us == clock_us then
    return string.sub(clock_text, 1, -4)
  end
  return string.format('%.0f', math.floor(us / 1000))
end

-- The fencing counter's stored value (`raw`, text or nil) as a number; nil when it is missing
-- or damaged: not a number, or not a finite one (Lua's tonumber takes 'nan' and 'inf', which
-- would make every later token NaN or infinite).
local function counter_value(raw)
  local counter = tonumber(raw or '')
  if counter and counter == counter and counter > -math.huge and counter < math.huge then
    return counter
  end
  return nil
end

-- Issue the next fencing token: bump the counter at `fence_key` (kept `retention` ms) and
-- return the new token, and the same as text. It never goes below the server clock in
-- microseconds, so it keeps increasing even when the counter was lost (restart without
-- persistence) or expired after a long idle spell.
local function next_fence(fence_key, retention, now_us)
  -- A damaged counter restarts from the clock rather than failing the call.
  local fence = math.max((counter_value(redis.call('GET', fence_key)) or 0) + 1, now_us)
  local fence_text = us_text(fence)
  redis.call('SET', fence_key, fence_text, 'PX', retention)
  return fence, fence_text
end

-- Grant `lock` to `token` for `ttl` ms: set the key, issue a fencing token, record the holder.
local function grant(lock, info, fence_key, token, ttl, retention, host, pid, label, now_us)
  -- The token first: should anything fail after it, the lock is not left set without one.
  local fence, fence_text = next_fence(fence_key, retention, now_us)
  redis.call('SET', lock, token, 'PX', ttl)
  redis.call('HSET', info, 'host', host, 'pid', pid, 'label', label,
             'since_ms', ms_text(now_us), 'fence', fence_text)
  redis.call('PEXPIRE', info, ttl)
  return fence
end

-- Redlock: grant `lock` to `token` with the client's proposed fencing token `proposal`, if it
-- is above the counter at `fence_key`, which then becomes the proposal (see connection/quorum,
-- "Fencing across nodes"). Returns the proposal, as the caller's text (exactly what was
-- stored, no round trip through a double); or nil and the counter, nothing written.
local function grant_proposed(lock, info, fence_key, token, ttl, retention, host, pid, label,
                              now_us, proposal)
  -- A damaged counter (counter_value) is overwritten, as a lost one would be.
  local counter = redis.call('GET', fence_key)
  local stored = counter_value(counter)
  if stored and stored >= tonumber(proposal) then
    return nil, counter
  end
  redis.call('SET', lock, token, 'PX', ttl)
  redis.call('SET', fence_key, proposal, 'PX', retention)
  redis.call('HSET', info, 'host', host, 'pid', pid, 'label', label,
             'since_ms', ms_text(now_us), 'fence', proposal)
  redis.call('PEXPIRE', info, ttl)
  return proposal
end

-- This token already holds `lock` (a retry whose first reply was lost): extend it to `ttl`
-- and return the grant's fencing token.
local function regrant(lock, info, ttl)
  redis.call('PEXPIRE', lock, ttl)
  redis.call('PEXPIRE', info, ttl)
  local fence = tonumber(redis.call('HGET', info, 'fence') or '')
  if not fence then
    -- Damaged data (the holder info lost while the lock key stayed): never answer token 0.
    return redis.error_reply('ERR dlock: the lock ' .. lock .. ' is held by this token but '
                             .. 'its holder info has no fencing token (damaged data)')
  end
  return fence
end

-- The busy answer every acquire script gives (parsed by `Lock::busy`): remaining lease, holder
-- info, the server's clock, and an optional extra field (fair mode: the lease of the waiter
-- just ahead).
local function busy(lock, info, now_ms, extra)
  return {0, redis.call('PTTL', lock), redis.call('HGETALL', info), now_ms, extra}
end

