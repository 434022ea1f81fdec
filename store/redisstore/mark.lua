-- Mark: note on a live claim that someone waits for it, so that completing
-- or releasing it publishes a wake-up.
--
-- KEYS[1]  storage key
--
-- Reply: the claim's lease left in milliseconds (-1 if it has none, which
-- only a foreign write can cause); -2 when the key holds no live claim.
local v = redis.call('GET', KEYS[1])
if not v then
  return -2
end
local tag = string.sub(v, 1, 1)
if tag == 'c' then
  -- SETRANGE keeps the key's TTL, and so the lease.
  redis.call('SETRANGE', KEYS[1], 0, 'w')
elseif tag ~= 'w' then
  return -2
end
return redis.call('PTTL', KEYS[1])
