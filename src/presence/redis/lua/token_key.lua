-- token_key: the token key every instance shares (KEYS[1]), made once:
-- ARGV[5] is this instance's candidate, kept only if there is none yet.
redis.call('SET', KEYS[1], ARGV[5], 'NX')
return redis.call('GET', KEYS[1])
