-- lease_release.lua: give a lease up only if this holder still owns it, so
-- a holder whose lease expired never deletes its successor's.
--
-- KEYS[1] lease key        (string: the holder's random token)
-- ARGV[1] holder token
--
-- Returns 1 if the lease was deleted, 0 if it was not this holder's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
