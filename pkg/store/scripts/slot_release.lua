-- slot_release.lua: a deployment no longer runs or waits in an
-- environment. If it held the environment, the oldest waiting deployment
-- gets it.
--
-- KEYS[1] slot     (string: the deployment id holding the environment)
-- KEYS[2] queue    (list: deployment ids waiting, oldest first)
-- KEYS[3] released (sorted set: deployment ids released, scored by ms)
-- ARGV[1] deployment id
-- ARGV[2] now, ms (released ids are remembered for 7 days)
--
-- Returns the deployment id that holds the environment after this release
-- (false for none). When the releasing deployment no longer held it (a
-- replay after a crash), that is whoever holds it now: the caller grants it
-- again, which its flow ignores if it already runs. So a crash between this
-- script and the grant never leaves the next deployment waiting for ever.
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[2]) - 7 * 24 * 3600 * 1000)
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] then
  return holder
end
local nxt = redis.call('LPOP', KEYS[2])
if nxt then
  redis.call('SET', KEYS[1], nxt)
  return nxt
end
redis.call('DEL', KEYS[1])
return false
