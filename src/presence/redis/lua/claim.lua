-- claim: who holds a session id (KEYS[1], the session's index group: id
-- -> room US user), so that one id cannot live in two rooms or users.
-- ARGV[5] mode, [6] session, [7] owner (room US user), [8] the holder a
-- steal expects.
--   claim    take it if free or ours: '' , else the holder
--   steal    take it from a holder found stale: '' , else the holder now
--   release  give it up if ours; [6], [7] repeat for more sessions of
--            the group (a sweep releases a group's claims together)
local MODE, SID, OWNER = ARGV[5], ARGV[6], ARGV[7]
if MODE == 'release' then
  for i = 6, #ARGV - 1, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
      redis.call('HDEL', KEYS[1], ARGV[i])
    end
  end
  return ''
end
local held = redis.call('HGET', KEYS[1], SID)
if not held or held == OWNER or (MODE == 'steal' and held == ARGV[8]) then
  redis.call('HSET', KEYS[1], SID, OWNER)
  return ''
end
return held
