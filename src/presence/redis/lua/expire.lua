-- expire: the sweep of one due room. ARGV[5] retention ms, [6] the batch
-- window ms, [7] the most sessions ended and users purged in one call.
-- Ends the sessions past their deadline and forgets the offline users past
-- their retention, re-checking each here, so sweepers racing on the same
-- room end each session once (the loser finds nothing due). Then queues the
-- room again at its next deadline (no sooner than one window from now) or
-- purge; a room with more to do than one call may do stays due now.
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
local next_deadline, done, more = nil, 0, false
local all = redis.call('HGETALL', H)
for i = 1, #all, 2 do
  local f = all[i]
  if string.sub(f, 1, 1) == 's' then
    local s = session(all[i + 1])
    if s.deadline <= now and done >= MOST then
      more = true
    elseif s.deadline <= now then
      done = done + 1
      local id = string.sub(f, 2)
      if end_session(id, all[i + 1], now, RETENTION) then visible = true end
      ended[#ended + 1] = id
      ended[#ended + 1] = s.user
    elseif not next_deadline or s.deadline < next_deadline then
      next_deadline = s.deadline
    end
  end
end
ended[#ended + 1] = ''
local gone = redis.call('ZRANGEBYSCORE', O, -(now - RETENTION), '+inf', 'LIMIT', 0, MOST)
if #gone == MOST then more = true end
for _, m in ipairs(gone) do
  local id = string.sub(m, 17)
  redis.call('HDEL', H, 'u' .. id)
  redis.call('ZREM', O, m)
  ended[#ended + 1] = id
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
