-- create: the slow path of a heartbeat, after the session id is claimed
-- and the limits elsewhere are reserved. ARGV[5] user, [6] session, [7]
-- ttl ms, [8] max sessions per user in a room, [9] retention ms.
-- Ends the session first if its deadline passed; publishes only what
-- changed visibly (a user who goes offline and comes back at once is
-- visible only if that moved them).
--   {'live', incarnation, deadline}           it was live after all
--   {'created', incarnation, deadline, room created, expired one}
--   {'conflict'} | {'limit', expired one}
local now = now_ms()
local USER, SID, TTL = ARGV[5], ARGV[6], tonumber(ARGV[7])
local MAX_IN_ROOM, RETENTION = tonumber(ARGV[8]), tonumber(ARGV[9])
local went_offline, was_last, expired = false, false, 0
local raw = field('s' .. SID)
if raw then
  local s = session(raw)
  if s.user ~= USER then return {'conflict'} end
  if s.deadline > now then
    s.deadline = now + TTL
    s.ttl = TTL
    write_session(SID, s)
    queue_at(s.deadline)
    return {'live', s.inc, s.deadline}
  end
  was_last = last_online() == USER
  went_offline = end_session(SID, raw, now, RETENTION)
  expired = 1
end
local raw_user = field('u' .. USER)
local u = raw_user and user(raw_user)
if u and u.sessions >= MAX_IN_ROOM then
  if went_offline then changed(now) end
  return {'limit', expired}
end
local created = 0
if not live() then
  redis.call('PERSIST', H)
  redis.call('HSET', H, '#n', '0', '#o', '0')
  redis.call('HSETNX', H, '#i', '0')
  redis.call('HDEL', H, '#q')
  total('r', 1)
  created = 1
end
local inc = math.max(number('#i'), now * 1000)
redis.call('HSET', H, '#i', fmt(inc + 1))
local came_online = false
local function next_seq()
  return redis.call('HINCRBY', H, '#n', 1) - 1
end
if not u then
  u = {seq = 0, sessions = 0, since = 0, data = ''}
end
u.sessions = u.sessions + 1
if u.sessions == 1 then
  redis.call('ZREM', O, member(u.seq, USER))
  u.seq = next_seq()
  u.since = 0
  redis.call('ZADD', O, ONLINE, member(u.seq, USER))
  redis.call('HINCRBY', H, '#o', 1)
  total('o', 1)
  came_online = true
end
write_user(USER, u)
write_session(SID, {user = USER, deadline = now + TTL, ttl = TTL, inc = inc})
total('s', 1)
queue_at(now + TTL)
if went_offline ~= came_online or (went_offline and not was_last) then
  changed(now)
end
return {'created', inc, now + TTL, created, expired}
