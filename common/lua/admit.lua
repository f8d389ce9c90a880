-- Admit values of one feature until the set holds `cap`; answer 1 (admitted) or 0 per value.
-- KEYS: values
-- ARGV: cap ttl *asked

local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local out = {}
local size = redis.call('SCARD', KEYS[1])
for i = 3, #ARGV do
  local v = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], v) == 1 then
    out[#out + 1] = 1
  elseif size < cap then
    redis.call('SADD', KEYS[1], v)
    size = size + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
return out
