-- Forget: delete whatever a key holds, a claim or a completed record.
--
-- KEYS[1]  storage key
-- ARGV[1]  wake-up channel
--
-- Reply: 1 deleted; 0 the key held nothing. A claim that a waiter marked
-- publishes its wake-up, as a release does.
--
-- GETRANGE reads the tag alone ("" for an absent key): a record may be
-- large, and copying it into Lua would be wasted.
local tag = redis.call('GETRANGE', KEYS[1], 0, 0)
if redis.call('DEL', KEYS[1]) == 0 then
  return 0
end
if tag == 'w' then
  redis.call('PUBLISH', ARGV[1], KEYS[1])
end
return 1
