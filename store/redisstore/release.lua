-- Release: delete the caller's live claim, so that the key can be claimed anew.
--
-- KEYS[1]  storage key
-- ARGV[1]  the caller's claim: "c" followed by the token
-- ARGV[2]  the same claim marked by a waiter: "w" followed by the token
-- ARGV[3]  wake-up channel
--
-- Reply: 1 done; 0 the key is not this token's live claim, nothing changed
-- (a completed record is never deleted). The wake-up is published only when
-- a waiter marked the claim.
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] and v ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[1])
if v == ARGV[2] then
  redis.call('PUBLISH', ARGV[3], KEYS[1])
end
return 1
