-- One registry change, only if the version is still the one read (else -1): routing
-- fields, entries put and deleted, seeds and unseeds, the audit entry; then bump the
-- version and publish it.
-- KEYS: routing registry seeded audit
-- ARGV: version channel audit_max n_routing n_put n_delete n_seed n_unseed n_audit *items

local version = redis.call('HGET', KEYS[1], 'version') or '0'
if version ~= ARGV[1] then return -1 end
local i = 10
local nr, np, nd = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ns, nu, na = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
for _ = 1, nr do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, np do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, nd do redis.call('HDEL', KEYS[2], ARGV[i]); i = i + 1 end
for _ = 1, ns do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
for _ = 1, nu do redis.call('HDEL', KEYS[3], ARGV[i]); i = i + 1 end
if na > 0 then
  local fields = {}
  for _ = 1, na do
    table.insert(fields, ARGV[i]); table.insert(fields, ARGV[i + 1]); i = i + 2
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
end
local new = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PUBLISH', ARGV[2], new)
return new
