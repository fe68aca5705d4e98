-- outbox_ack.lua: drop published entries from the head of a flow's legacy
-- outbox (the single list versions before per-revision outboxes wrote).
-- Entries are removed only while they equal what was published, so an entry
-- appended meanwhile by another writer is never lost.
--
-- KEYS[1] outbox list
-- ARGV[1..n] the entries published, in order
--
-- Returns the number of entries removed.
local removed = 0
for i = 1, #ARGV do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if head ~= ARGV[i] then
    break
  end
  redis.call('LPOP', KEYS[1])
  removed = removed + 1
end
return removed
