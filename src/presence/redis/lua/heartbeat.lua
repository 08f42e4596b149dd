-- heartbeat: the fast path of a heartbeat. ARGV[5] user, [6] session,
-- [7] ttl ms. A live session of this room and user gets its new deadline;
-- anything else is reported for the slow path (create.lua), unchanged:
--   {'live', incarnation, deadline}
--   {'conflict'}                      the session belongs to another user
--   {'new', room exists, the user's sessions in the room}
--   {'expired', 1, the user's sessions in the room}   past its deadline
local now = now_ms()
local USER, SID, TTL = ARGV[5], ARGV[6], tonumber(ARGV[7])
local raw = field('s' .. SID)
local function users_sessions()
  local u = field('u' .. USER)
  return u and user(u).sessions or 0
end
if not raw then
  return {'new', live() and 1 or 0, users_sessions()}
end
local s = session(raw)
if s.user ~= USER then return {'conflict'} end
if s.deadline <= now then return {'expired', 1, users_sessions()} end
s.deadline = now + TTL
s.ttl = TTL
write_session(SID, s)
queue_at(s.deadline)
return {'live', s.inc, s.deadline}
