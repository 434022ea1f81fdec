-- Inspect: read what a key holds, and its time to live, without changing it.
--
-- KEYS[1]  storage key
--
-- Reply: {} when the key holds nothing; otherwise {value, pttl}, the whole
-- value ("c" or "w" then a token for a claim, "d" then the bytes for a
-- completed record) and its time to live in milliseconds (-1: none).
local v = redis.call('GET', KEYS[1])
if not v then
  return {}
end
return {v, redis.call('PTTL', KEYS[1])}
