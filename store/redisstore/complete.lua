-- Complete: replace the caller's live claim with its record.
--
-- KEYS[1]  storage key
-- ARGV[1]  token
-- ARGV[2]  record value: "d" followed by the record bytes
-- ARGV[3]  expiry, in milliseconds; 0 means never
-- ARGV[4]  wake-up channel
--
-- Reply: 1 done; 0 the key is not this token's live claim, nothing changed.
-- The wake-up is published only when a waiter marked the claim.
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local tag = string.sub(v, 1, 1)
if (tag ~= 'c' and tag ~= 'w') or string.sub(v, 2) ~= ARGV[1] then
  return 0
end
local expiry = tonumber(ARGV[3])
if expiry > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', expiry)
else
  -- SET without PX also drops the claim's lease.
  redis.call('SET', KEYS[1], ARGV[2])
end
if tag == 'w' then
  redis.call('PUBLISH', ARGV[4], KEYS[1])
end
return 1
