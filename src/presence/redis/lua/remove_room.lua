-- remove_room: removes every user and session of the room. Returns
-- {user, sessions of theirs, ..., '', session, user, ...}: the users
-- (for their indexes), then the ended sessions; {} if the room was empty.
local now = now_ms()
if not live() then return {} end
local users, sessions = {}, {}
local all = redis.call('HGETALL', H)
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  local kind = string.sub(f, 1, 1)
  if kind == 'u' then
    users[#users + 1] = string.sub(f, 2)
    users[#users + 1] = user(v).sessions
  elseif kind == 's' then
    sessions[#sessions + 1] = string.sub(f, 2)
    sessions[#sessions + 1] = session(v).user
  end
end
total('s', -(#sessions / 2))
total('o', -number('#o'))
changed(now)
bury()
local out = users
out[#out + 1] = ''
for _, x in ipairs(sessions) do out[#out + 1] = x end
return out
