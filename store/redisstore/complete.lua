-- Complete: replace the caller's live claim with its record.
--
-- KEYS[1]  storage key
-- ARGV[1]  the caller's claim: "c" followed by the token
-- ARGV[2]  the same claim marked by a waiter: "w" followed by the token
-- ARGV[3]  record value: "d" followed by the record bytes
-- ARGV[4]  expiry, in milliseconds (at most MaxTTL, which Redis accepts); 0 means never
-- ARGV[5]  wake-up channel
--
-- Reply: 1 done; 0 the key is not this token's live claim, nothing changed.
-- The wake-up is published only when a waiter marked the claim.
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] and v ~= ARGV[2] then
  return 0
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  -- SET without PX also drops the claim's lease.
  redis.call('SET', KEYS[1], ARGV[3])
end
if v == ARGV[2] then
  redis.call('PUBLISH', ARGV[5], KEYS[1])
end
return 1
