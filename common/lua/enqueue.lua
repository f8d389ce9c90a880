-- Queue one request record for a dispatcher (run = "dispatcher"), unless the queue holds
-- max_queue entries already: then nothing is written and 0 comes back. Either way the
-- outcome is counted in the record's bucket here, with the write (dispatch:queued or
-- dispatch:overflow), so the report never sees a dispatched pair before its queuing.
-- A full queue sheds new requests, never queued ones: trimming what waits would lose it.
-- KEYS: requests bucket index
-- ARGV: max_queue start ttl *fields

local id = 0
local counted = 'dispatch:overflow'
if redis.call('XLEN', KEYS[1]) < tonumber(ARGV[1]) then
  local fields = {}
  for i = 4, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  id = redis.call('XADD', KEYS[1], '*', unpack(fields))
  counted = 'dispatch:queued'
end
redis.call('HINCRBY', KEYS[2], counted, 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[2])
return id
