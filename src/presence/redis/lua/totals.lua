-- totals: live sessions and rooms in all (KEYS[1]), for the limits on
-- them: reserved before a session or room is made, released after it is
-- gone. ARGV[5] mode, then:
--   reserve  [6] max sessions, [7] 1 to reserve a room too, [8] max rooms:
--            '' or the limit reached
--   release  [6] sessions, [7] rooms (never below zero)
local MODE = ARGV[5]
local s = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
if MODE == 'reserve' then
  if s >= tonumber(ARGV[6]) then return 'sessions' end
  local room = ARGV[7] == '1'
  if room and r >= tonumber(ARGV[8]) then return 'rooms' end
  redis.call('HSET', KEYS[1], 's', fmt(s + 1))
  if room then redis.call('HSET', KEYS[1], 'r', fmt(r + 1)) end
  return ''
end
redis.call('HSET', KEYS[1], 's', fmt(math.max(0, s - tonumber(ARGV[6]))),
  'r', fmt(math.max(0, r - tonumber(ARGV[7]))))
return ''
