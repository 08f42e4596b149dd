-- expire: the sweep of one due room. ARGV[5] retention ms, [6] the batch
-- window ms, [7] the most sessions ended and users purged in one call.
-- Ends the sessions past their deadline and forgets the offline users past
-- their retention, re-checking each here, so sweepers racing on the same
-- room end each session once (the loser finds nothing due). Then queues the
-- room again at its next deadline (no sooner than one window from now) or
-- purge; a room with more to do than one call may do stays due now.
-- A mass expiry is many sessions per call, so the work is batched: the
-- room is read once, and each command (HDEL, ZADD, HINCRBY) runs once per
-- call, not once per session.
-- Returns {state, session, user, ..., '', purged user, ...}, state 1 when
-- the room was deleted, 2 when more is due, else 0.
local now = now_ms()
local RETENTION, BATCH, MOST = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local due = redis.call('ZSCORE', DUE, ROOM)
if not live() then
  redis.call('ZREM', DUE, ROOM)
  return {0, ''}
end
if due and tonumber(due) > now then return {0, ''} end
local ended, visible = {0}, false
local next_deadline, more = nil, false
-- Sessions due (fields to delete), and per user: its record, sessions ended.
local gone_fields, users, per_user, user_order = {}, {}, {}, {}
local all = redis.call('HGETALL', H)
for i = 1, #all, 2 do
  local f = all[i]
  local kind = string.sub(f, 1, 1)
  if kind == 's' then
    -- Only the user and the deadline are needed: read just those two.
    local v = all[i + 1]
    local a = string.find(v, US, 1, true)
    local b = a and string.find(v, US, a + 1, true)
    if not b then error('corrupt value: ' .. v) end
    local deadline = tonumber(string.sub(v, a + 1, b - 1))
    if deadline > now then
      if not next_deadline or deadline < next_deadline then next_deadline = deadline end
    elseif #gone_fields >= MOST then
      more = true
    else
      local uid = string.sub(v, 1, a - 1)
      gone_fields[#gone_fields + 1] = f
      ended[#ended + 1] = string.sub(f, 2)
      ended[#ended + 1] = uid
      if not per_user[uid] then
        per_user[uid] = 0
        user_order[#user_order + 1] = uid
      end
      per_user[uid] = per_user[uid] + 1
    end
  elseif kind == 'u' then
    users[string.sub(f, 2)] = all[i + 1]
  end
end
ended[#ended + 1] = ''
if #gone_fields > 0 then
  redis.call('HDEL', H, unpack(gone_fields))
  total('s', -#gone_fields)
  local offline, moved = 0, {}
  for _, uid in ipairs(user_order) do
    local raw = users[uid]
    if raw then
      local u = user(raw)
      u.sessions = math.max(0, u.sessions - per_user[uid])
      if u.sessions == 0 and u.since == 0 then
        u.since = now
        offline = offline + 1
        moved[#moved + 1] = fmt(-now)
        moved[#moved + 1] = member(u.seq, uid)
      end
      write_user(uid, u)
    end
  end
  if offline > 0 then
    redis.call('ZADD', O, unpack(moved))
    redis.call('HINCRBY', H, '#o', -offline)
    total('o', -offline)
    visible = true
  end
end
local gone = redis.call('ZRANGEBYSCORE', O, -(now - RETENTION), '+inf', 'LIMIT', 0, MOST)
if #gone == MOST then more = true end
if #gone > 0 then
  local purged = {}
  for _, m in ipairs(gone) do
    local id = string.sub(m, 17)
    purged[#purged + 1] = 'u' .. id
    ended[#ended + 1] = id
  end
  redis.call('HDEL', H, unpack(purged))
  redis.call('ZREM', O, unpack(gone))
  visible = true
end
if visible then changed(now) end
if redis.call('ZCARD', O) == 0 then
  bury()
  ended[1] = 1
  return ended
end
local next_at = nil
if more then
  next_at = now
  ended[1] = 2
elseif next_deadline then
  next_at = math.max(next_deadline, now + BATCH)
end
local last = redis.call('ZRANGE', O, -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) > ONLINE then
  local purge = -tonumber(last[2]) + RETENTION
  if not next_at or purge < next_at then next_at = purge end
end
if next_at then
  redis.call('HSET', H, '#q', fmt(next_at))
  redis.call('ZADD', DUE, next_at, ROOM)
else
  redis.call('HDEL', H, '#q')
  redis.call('ZREM', DUE, ROOM)
end
return ended
