-- Shared by every script: prepended to each when it is loaded (see
-- scripts.rs). A room's keys, in every room script:
--   KEYS[1] H    the room hash: '#v' version, '#n' next rank sequence
--                (present only while the room has users), '#o' online
--                users, '#i' next incarnation, '#q' when the room is next
--                looked at; 's<session>' = user US deadline US ttl US
--                incarnation; 'u<user>' = seq US sessions US since US data
--                (since 0 while online; data is compact JSON or empty)
--   KEYS[2] O    the listing order: member = seq (16 digits) .. user,
--                score ONLINE while online, else -since
--   KEYS[3] DUE  the group's rooms by when they are next looked at
--   KEYS[4] TOT  the group's totals: 's' sessions, 'r' rooms, 'o' online
-- ARGV[1] the time in unix ms ('' = Redis's TIME), ARGV[2] the room id,
-- ARGV[3] the room's channel, ARGV[4] PUBLISH or SPUBLISH; then the
-- script's own arguments.
-- Numbers are written with fmt(): Lua's tostring would lose digits.

local US = '\31'
local ONLINE = -9e15
local TOMBSTONE_TTL = 3600
local H, O, DUE, TOT = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ROOM, CHANNEL, PUB = ARGV[2], ARGV[3], ARGV[4]

local function fmt(n) return string.format('%d', n) end

local function now_ms()
  local given = tonumber(ARGV[1])
  if given then return given end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function field(f) return redis.call('HGET', H, f) end
local function number(f) return tonumber(field(f) or '0') end

-- The fields of a value: the first n - 1 separated by US, then the rest.
local function fields(value, n)
  local out, at = {}, 1
  for _ = 1, n - 1 do
    local stop = string.find(value, US, at, true)
    if not stop then error('corrupt value: ' .. value) end
    out[#out + 1] = string.sub(value, at, stop - 1)
    at = stop + 1
  end
  out[#out + 1] = string.sub(value, at)
  return out
end

local function session(value)
  local f = fields(value, 4)
  return {user = f[1], deadline = tonumber(f[2]), ttl = tonumber(f[3]), inc = tonumber(f[4])}
end

local function write_session(id, s)
  redis.call('HSET', H, 's' .. id, s.user .. US .. fmt(s.deadline) .. US .. fmt(s.ttl) .. US .. fmt(s.inc))
end

local function user(value)
  local f = fields(value, 4)
  return {seq = tonumber(f[1]), sessions = tonumber(f[2]), since = tonumber(f[3]), data = f[4]}
end

local function write_user(id, u)
  redis.call('HSET', H, 'u' .. id, fmt(u.seq) .. US .. fmt(u.sessions) .. US .. fmt(u.since) .. US .. u.data)
end

local function member(seq, id) return string.format('%016d', seq) .. id end

local function total(f, by) redis.call('HINCRBY', TOT, f, fmt(by)) end

-- Versions grow by one per visible change, and stay above the clock
-- (microseconds), so they keep growing if Redis loses its data, and above
-- the version a room nobody is in shows at the same millisecond.
local function changed(now)
  local v = math.max(number('#v') + 1, now * 1000 + 1)
  redis.call('HSET', H, '#v', fmt(v))
  redis.call(PUB, CHANNEL, fmt(v))
  return v
end

-- The room is next looked at no later than `at`.
local function queue_at(at)
  local q = tonumber(field('#q'))
  if not q or at < q then
    redis.call('HSET', H, '#q', fmt(at))
    redis.call('ZADD', DUE, at, ROOM)
  end
end

-- Ends a session (its value `value`) at `now`; returns whether its user
-- went offline.
local function end_session(id, value, now, retention)
  local s = session(value)
  redis.call('HDEL', H, 's' .. id)
  total('s', -1)
  local raw = field('u' .. s.user)
  if not raw then return false end
  local u = user(raw)
  u.sessions = u.sessions - 1
  if u.sessions > 0 then
    write_user(s.user, u)
    return false
  end
  u.since = now
  write_user(s.user, u)
  redis.call('ZADD', O, -now, member(u.seq, s.user))
  redis.call('HINCRBY', H, '#o', -1)
  total('o', -1)
  queue_at(now + retention)
  return true
end

-- The room has users (it is not absent, nor a tombstone).
local function live() return redis.call('HEXISTS', H, '#n') == 1 end

-- A room with no users left: only its version and incarnation counter stay
-- (for an hour), so a room made anew continues them.
local function bury()
  local v, i = field('#v'), field('#i')
  redis.call('DEL', H, O)
  redis.call('HSET', H, '#v', v or '0', '#i', i or '0')
  redis.call('EXPIRE', H, TOMBSTONE_TTL)
  redis.call('ZREM', DUE, ROOM)
  total('r', -1)
end

-- The online user who came online last, if any.
local function last_online()
  local last = redis.call('ZREVRANGEBYSCORE', O, ONLINE, ONLINE, 'LIMIT', 0, 1)[1]
  return last and string.sub(last, 17)
end
