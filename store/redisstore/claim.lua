-- Claim: one round trip that claims a free key or reports what it holds.
--
-- KEYS[1]  storage key
-- ARGV[1]  claim value: "c" followed by the token
-- ARGV[2]  lease, in milliseconds (> 0, at most MaxTTL, which Redis accepts)
-- ARGV[3]  the same claim marked by a waiter: "w" followed by the token
--
-- Values: "c"..token is a claim, "w"..token a claim that a waiter has marked,
-- "d"..record a completed record. Expiry is the key's own TTL.
--
-- Reply: {1} claimed (also when the key is already this token's claim);
-- {2, pttl} in flight, with the lease left in milliseconds; {3, value, pttl}
-- anything else, with the whole value, which the caller checks is a
-- completed record, and its time to live in milliseconds (-1: none), which
-- a local cache of completed records honours. Only the first branch writes.
--
-- Values are compared whole and tags read with string.byte: Lua interns
-- every string it makes, so slicing values would cost more than the rest.
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1}
end
if v == ARGV[1] or v == ARGV[3] then
  -- The caller's own claim, sent again after its answer was lost.
  return {1}
end
local tag = string.byte(v)
if tag == 99 or tag == 119 then -- 'c' or 'w'
  return {2, redis.call('PTTL', KEYS[1])}
end
return {3, v, redis.call('PTTL', KEYS[1])}
