-- update: replaces a listed user's data; ARGV[5] user, [6] data (compact
-- JSON, '' to clear). Returns 'absent', 'same' or 'changed'.
local now = now_ms()
local USER, DATA = ARGV[5], ARGV[6]
local raw = field('u' .. USER)
if not raw then return 'absent' end
local u = user(raw)
if u.data == DATA then return 'same' end
u.data = DATA
write_user(USER, u)
changed(now)
return 'changed'
