-- disconnect: ends a session of this room and user; ARGV[5] user, [6]
-- session, [7] incarnation ('' = any), [8] retention ms. Returns 1 when a
-- session ended, else 0. Closing one of a user's two tabs publishes
-- nothing.
local now = now_ms()
local USER, SID, INC, RETENTION = ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local raw = field('s' .. SID)
if not raw then return 0 end
local s = session(raw)
if s.user ~= USER or (INC and INC ~= s.inc) then return 0 end
if end_session(SID, raw, now, RETENTION) then changed(now) end
return 1
