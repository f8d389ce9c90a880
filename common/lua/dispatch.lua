-- A dispatcher is done with one request record: acknowledge and delete it, write the pair
-- (when there is one) and count what became of it, all or nothing. XACK says whether this
-- dispatcher still owns the entry: 0 when another one took it over (XAUTOCLAIM) and
-- finished it first, so a record is written and counted once however many dispatchers
-- called the candidate for it, and a dispatcher killed before this runs loses nothing.
-- KEYS: requests pairs bucket index
-- `timed` (when not empty) is one more field to count: the bin of the candidate's latency
-- (`dl:<bin>`), so the report tells dispatched latency from the proxy's.
-- ARGV: group id maxlen start ttl counted timed *fields

if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
if #ARGV > 7 then
  local fields = {}
  for i = 8, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
end
redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
if ARGV[7] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[7], 1)
end
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[4])
return 1
