-- lease_renew.lua: extend a lease only if this holder still owns it.
--
-- KEYS[1] lease key        (string: the holder's random token)
-- ARGV[1] holder token
-- ARGV[2] new time to live in milliseconds
--
-- Returns 1 if the lease was extended, 0 if it expired or another holder
-- took it (the caller must stop acting as the holder).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
