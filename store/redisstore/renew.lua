-- Renew: set the lease of the caller's live claim to a new lease from now.
--
-- KEYS[1]  storage key
-- ARGV[1]  token
-- ARGV[2]  lease, in milliseconds (> 0)
--
-- Reply: 1 done; 0 the key is not this token's live claim, nothing changed
-- (a completed record's expiry is never touched).
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local tag = string.sub(v, 1, 1)
if (tag ~= 'c' and tag ~= 'w') or string.sub(v, 2) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
