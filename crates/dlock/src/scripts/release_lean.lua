-- The common release, before the preludes (scripts.rs puts it first): one lock, still held by
-- this token, nobody queued. Lua makes a closure for every `local function` a script runs
-- past, and the preludes define about twenty, which cost more server time than this whole
-- release (measured: docs/benchmarks.md, "Server time per lock cycle"). Exactly what
-- release.lua does in this case; any other case falls through to it.
if (#ARGV == 4 or #ARGV == 5) and redis.pcall('GET', KEYS[1]) == ARGV[1]
   and not redis.call('LINDEX', KEYS[4], 0) then
  redis.call('DEL', KEYS[1], KEYS[2])
  if ARGV[4] ~= '1' then
    redis.pcall('PUBLISH', ARGV[2], '')
  end
  return {1}
end
