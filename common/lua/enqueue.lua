-- Queue request records for a dispatcher (run = "dispatcher"): each one unless the queue
-- holds max_queue entries already (then it is not written and 0 stands for its id). The
-- outcomes are counted in the records' bucket here, with the writes (dispatch:queued,
-- dispatch:overflow), so the report never sees a dispatched pair before its queuing.
-- A full queue sheds new requests, never queued ones: trimming what waits would lose it.
-- One call takes a batch of one candidate's records of one bucket: the proxy's capture
-- pays one script call per batch, not per request. Scripts are not rolled back: once the
-- first XADD ran, none of the others can fail (same key, same kind of arguments; OOM and
-- read-only refusals come before the first write), so the counts always match the stream.
-- KEYS: requests bucket index
-- ARGV: max_queue start ttl *records
-- records: for each record its field count, then its fields and values.

local room = tonumber(ARGV[1]) - redis.call('XLEN', KEYS[1])
local ids, queued, overflow = {}, 0, 0
local i = 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  if room > 0 then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
    room = room - 1
    queued = queued + 1
  else
    ids[#ids + 1] = 0
    overflow = overflow + 1
  end
  i = i + n + 1
end
if queued > 0 then redis.call('HINCRBY', KEYS[2], 'dispatch:queued', queued) end
if overflow > 0 then redis.call('HINCRBY', KEYS[2], 'dispatch:overflow', overflow) end
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[2])
return ids
