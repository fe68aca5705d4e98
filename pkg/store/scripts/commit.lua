-- commit.lua: write a flow's new state, its outbox and the applied-event
-- marker in one step, only if nobody else wrote the flow since it was read.
--
-- KEYS[1] flow hash        (fields: state = flow JSON, rev = write version)
-- KEYS[2] applied set      (event ids already applied to this flow)
-- KEYS[3] outbox revisions (sorted set: revisions whose entries are not all
--                           carried out)
-- KEYS[4] this write's outbox (list; the key of revision ARGV[1] + 1)
-- KEYS[5] legacy outbox    (the single list older versions wrote; only
--                           looked at)
-- ARGV[1] expected rev     ("0" when the flow did not exist)
-- ARGV[2] new state JSON
-- ARGV[3] event id
-- ARGV[4..n] outbox entries, in order
--
-- Returns {rev, pending}: the new rev (>= 1) and how many outbox writes are
-- not carried out, this one included (more means an earlier writer's
-- entries are still there); {-1, 0} if the rev moved (a concurrent writer
-- won: reload and apply again); {-2, 0} if the event was already applied.
if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 1 then
  return {-2, 0}
end
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if rev ~= tonumber(ARGV[1]) then
  return {-1, 0}
end
rev = rev + 1
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'rev', rev)
redis.call('SADD', KEYS[2], ARGV[3])
if #ARGV >= 4 then
  redis.call('RPUSH', KEYS[4], unpack(ARGV, 4))
  redis.call('ZADD', KEYS[3], rev, rev)
end
local pending = redis.call('ZCARD', KEYS[3]) + redis.call('EXISTS', KEYS[5])
return {rev, pending}
