-- last_succeeded.lua: record the version that succeeded in an environment,
-- unless a later success is already recorded there. A replayed outbox
-- (after a crash, up to AckWait later) can carry an older flow's success
-- after a newer flow's: the newer one stays.
--
-- KEYS[1] last successes      (hash: environment -> JSON of the version)
-- KEYS[2] their success times (hash: environment -> µs since the epoch)
-- ARGV[1] environment
-- ARGV[2] JSON of the version
-- ARGV[3] when it succeeded, µs since the epoch
--
-- Returns 1 if recorded, 0 if a later success was kept. The same success
-- again (a replay of the same write) is recorded again, unchanged.
local at = redis.call('HGET', KEYS[2], ARGV[1])
if at and tonumber(at) > tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
