-- Renew: set the lease of the caller's live claim to a new lease from now.
--
-- KEYS[1]  storage key
-- ARGV[1]  the caller's claim: "c" followed by the token
-- ARGV[2]  the same claim marked by a waiter: "w" followed by the token
-- ARGV[3]  lease, in milliseconds (> 0, at most MaxTTL, which Redis accepts)
--
-- Reply: 1 done; 0 the key is not this token's live claim, nothing changed
-- (a completed record's expiry is never touched).
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] and v ~= ARGV[2] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
