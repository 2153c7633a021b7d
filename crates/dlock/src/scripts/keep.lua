-- Release with a minimum hold: the owner's work is done, but the lock stays taken for ARGV[2]
-- more ms (nobody renews it; then it expires), and its holder info says so. Owner-checked,
-- like every write to a lock.
-- KEYS: 1 lock, 2 holder info, 3 reentrant hold set (absent for plain locks)
-- ARGV: 1 token, 2 ms to keep the lock
-- Returns {1} when the lock was ours, {0} otherwise (then nothing is touched).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'finished', '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return {1}
