-- user_index: where a user is listed (KEYS[1], the user's index group:
-- user -> records 'room US sessions US touched ms' separated by RS), for
-- ListUser and the per-user limits. Room scripts cannot update it (another
-- slot), so it is updated in a second step that self-heals: a session is
-- counted before its room has it, and uncounted after its room lost it.
-- ARGV[5] mode, [6] user, [7] room, then:
--   reserve  [8] max sessions per user, [9] max rooms per user:
--            'new' (the room is new to the user), 'ok', or the limit reached
--   release  [8] sessions ended, [9] 1 when the user left the room;
--            [6] to [9] repeat for more (a sweep releases a group's
--            sessions together)
--   heal     [8] when the facts were read, then room, listed, sessions...
--            (a record touched since is left alone; one the room does not
--            list and untouched for a minute is dropped)
local RS = '\30'
local now = now_ms()
local MODE, USER, R = ARGV[5], ARGV[6], ARGV[7]
-- A user's records by room, and the rooms in their order.
local function load(user)
  local records, order = {}, {}
  local raw = redis.call('HGET', KEYS[1], user)
  if raw then
    for rec in string.gmatch(raw, '[^' .. RS .. ']+') do
      local f = fields(rec, 3)
      records[f[1]] = {n = tonumber(f[2]), touched = tonumber(f[3])}
      order[#order + 1] = f[1]
    end
  end
  return records, order
end
local function store(user, records, order)
  local out = {}
  for _, room in ipairs(order) do
    local r = records[room]
    if r then out[#out + 1] = room .. US .. fmt(r.n) .. US .. fmt(r.touched) end
  end
  if #out == 0 then
    redis.call('HDEL', KEYS[1], user)
  else
    redis.call('HSET', KEYS[1], user, table.concat(out, RS))
  end
end
if MODE == 'release' then
  for i = 6, #ARGV - 3, 4 do
    local records, order = load(ARGV[i])
    local r = records[ARGV[i + 1]]
    if r then
      r.n = math.max(0, r.n - tonumber(ARGV[i + 2]))
      r.touched = now
      if ARGV[i + 3] == '1' then records[ARGV[i + 1]] = nil end
      store(ARGV[i], records, order)
    end
  end
  return 'ok'
end
local records, order = load(USER)
local function save() store(USER, records, order) end
if MODE == 'reserve' then
  local sessions, rooms = 0, 0
  for _, room in ipairs(order) do
    sessions = sessions + records[room].n
    rooms = rooms + 1
  end
  if sessions >= tonumber(ARGV[8]) then return 'sessions per user' end
  local outcome = 'ok'
  if not records[R] then
    if rooms >= tonumber(ARGV[9]) then return 'rooms per user' end
    records[R] = {n = 0, touched = now}
    order[#order + 1] = R
    outcome = 'new'
  end
  records[R].n = records[R].n + 1
  records[R].touched = now
  save()
  return outcome
elseif MODE == 'heal' then
  local seen_at = tonumber(ARGV[8])
  for i = 9, #ARGV, 3 do
    local r = records[ARGV[i]]
    if r and r.touched <= seen_at then
      if ARGV[i + 1] == '1' then
        r.n = tonumber(ARGV[i + 2])
      elseif r.touched < now - 60000 then
        records[ARGV[i]] = nil
      end
    end
  end
  save()
  return 'ok'
end
return redis.error_reply('unknown mode ' .. MODE)
