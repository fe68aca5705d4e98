-- slot_request.lua: ask for an environment. At most one deployment per
-- (service, environment) runs; the others wait in arrival order.
--
-- KEYS[1] slot     (string: the deployment id holding the environment)
-- KEYS[2] queue    (list: deployment ids waiting, oldest first)
-- KEYS[3] released (sorted set: deployment ids that gave the environment
--                   back, scored by ms; a deployment asks only once, so a
--                   late replay of its request must not take it again)
-- ARGV[1] deployment id
--
-- Returns 1 if the deployment holds the environment (now or already),
-- 0 if it waits, -1 if it already released it (the request is stale).
-- Idempotent: asking twice never queues twice.
if redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  return -1
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  return 1
end
if not redis.call('LPOS', KEYS[2], ARGV[1]) then
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
return 0
