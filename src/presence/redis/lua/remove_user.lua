-- remove_user: removes a user and their sessions from the room; ARGV[5]
-- user. Returns {room deleted, ended session ids...}, or {} if the user
-- was not listed.
local now = now_ms()
local USER = ARGV[5]
local raw = field('u' .. USER)
if not raw then return {} end
local u = user(raw)
local ended = {}
local all = redis.call('HGETALL', H)
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 1) == 's' and session(all[i + 1]).user == USER then
    redis.call('HDEL', H, f)
    ended[#ended + 1] = string.sub(f, 2)
  end
end
total('s', -#ended)
redis.call('HDEL', H, 'u' .. USER)
redis.call('ZREM', O, member(u.seq, USER))
if u.sessions > 0 then
  redis.call('HINCRBY', H, '#o', -1)
  total('o', -1)
end
changed(now)
local deleted = 0
if redis.call('ZCARD', O) == 0 then
  bury()
  deleted = 1
end
table.insert(ended, 1, deleted)
return ended
