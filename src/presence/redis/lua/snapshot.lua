-- snapshot: the room's listing, read in one step. ARGV[5] limit, [6] 1 for
-- online users only. Returns {version, online, total, member, score, data,
-- ...}; a room nobody is in has the clock's version (or its tombstone's).
local now = now_ms()
local LIMIT, ONLINE_ONLY = tonumber(ARGV[5]), ARGV[6] == '1'
if not live() then
  return {fmt(math.max(number('#v'), now * 1000)), 0, 0}
end
local out = {field('#v'), number('#o'), redis.call('ZCARD', O)}
local listed
if ONLINE_ONLY then
  listed = redis.call('ZRANGEBYSCORE', O, ONLINE, ONLINE, 'WITHSCORES', 'LIMIT', 0, LIMIT)
else
  listed = redis.call('ZRANGE', O, 0, LIMIT - 1, 'WITHSCORES')
end
for i = 1, #listed, 2 do
  local id = string.sub(listed[i], 17)
  local raw = field('u' .. id)
  out[#out + 1] = id
  out[#out + 1] = listed[i + 1]
  out[#out + 1] = raw and user(raw).data or ''
end
return out
