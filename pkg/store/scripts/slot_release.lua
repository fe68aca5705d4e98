-- slot_release.lua: a deployment no longer runs or waits in an
-- environment. If it held the environment, the oldest waiting deployment
-- gets it.
--
-- KEYS[1] slot  (string: the deployment id holding the environment)
-- KEYS[2] queue (list: deployment ids waiting, oldest first)
-- ARGV[1] deployment id
--
-- Returns the deployment id that now holds the environment because of this
-- release, or false. Idempotent: releasing twice grants nothing twice.
redis.call('LREM', KEYS[2], 0, ARGV[1])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local nxt = redis.call('LPOP', KEYS[2])
if nxt then
  redis.call('SET', KEYS[1], nxt)
  return nxt
end
redis.call('DEL', KEYS[1])
return false
