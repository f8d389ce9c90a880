-- Queue one request record for a dispatcher (run = "dispatcher"), unless the queue holds
-- max_queue entries already: then nothing is written and 0 comes back, so the proxy counts
-- the request dispatch_overflow. A full queue sheds new requests, never queued ones: what
-- waits has been counted queued, and trimming it would lose it silently.
-- KEYS: requests
-- ARGV: max_queue *fields

if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return redis.call('XADD', KEYS[1], '*', unpack(fields))
