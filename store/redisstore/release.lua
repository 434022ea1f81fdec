-- Release: delete the caller's live claim, so that the key can be claimed anew.
--
-- KEYS[1]  storage key
-- ARGV[1]  token
-- ARGV[2]  wake-up channel
--
-- Reply: 1 done; 0 the key is not this token's live claim, nothing changed
-- (a completed record is never deleted). The wake-up is published only when
-- a waiter marked the claim.
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local tag = string.sub(v, 1, 1)
if (tag ~= 'c' and tag ~= 'w') or string.sub(v, 2) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if tag == 'w' then
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end
return 1
