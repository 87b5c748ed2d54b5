//! Every Lua script the Redis backend runs (the analogue of the SQL
//! backends' `sql.rs`). Each is loaded once per server and called by its
//! SHA1 (`EVALSHA`); a server that answers `NOSCRIPT` (restarted, or
//! `SCRIPT FLUSH`ed) gets the script again (`redis::Script` does both).
//!
//! The store's decisions are made in Rust by the rules every backend
//! shares (`store/rules.rs`): a verb reads the records it needs, decides,
//! and sends one [`COMMIT`] that re-checks, on the server and atomically,
//! that everything it decided from is as it read it, and only then
//! writes. A commit whose guard fails writes nothing, and the verb reads
//! again and decides again (optimistic concurrency; Redis runs one script
//! at a time, so a commit is atomic and isolated).

/// The guarded commit.
///
/// `ARGV[1]` is the mode: `all` (every guard of every group must hold,
/// else nothing is written and the script returns 0) or `each` (each group
/// is checked and written on its own; returns a string of `1`/`0`, one per
/// group, saying which were written). `ARGV[2]` is the number of groups.
/// Each group is: the number of guards, then per guard `key`, `1` (the key
/// must hold exactly `value`) or `0` (the key must not exist) and `value`;
/// then the number of commands, then per command its word count and
/// words. Two words are the script's own: `EV evseq stream payload`
/// appends an event at the next position (`INCR evseq`, stream id
/// `0-<position>`), and `ZADDID` is reserved.
pub const COMMIT: &str = r#"
local mode = ARGV[1]
local groups = tonumber(ARGV[2])
local i = 3
local function guards_hold(at)
  local n = tonumber(ARGV[at]); at = at + 1
  local ok = true
  for _ = 1, n do
    local cur = redis.call('GET', ARGV[at])
    if ARGV[at + 1] == '0' then
      if cur then ok = false end
    elseif cur ~= ARGV[at + 2] then
      ok = false
    end
    at = at + 3
  end
  return ok, at
end
local function run(at, apply)
  local n = tonumber(ARGV[at]); at = at + 1
  for _ = 1, n do
    local words = tonumber(ARGV[at])
    if apply then
      if ARGV[at + 1] == 'EV' then
        local seq = redis.call('INCR', ARGV[at + 2])
        redis.call('XADD', ARGV[at + 3], '0-' .. seq, 'e', ARGV[at + 4])
      else
        redis.call(unpack(ARGV, at + 1, at + words))
      end
    end
    at = at + words + 1
  end
  return at
end
if mode == 'all' then
  local at = i
  for _ = 1, groups do
    local ok
    ok, at = guards_hold(at)
    if not ok then return 0 end
    at = run(at, false)
  end
  at = i
  for _ = 1, groups do
    local _ok
    _ok, at = guards_hold(at)
    at = run(at, true)
  end
  return 1
end
local out = {}
local at = i
for g = 1, groups do
  local ok
  ok, at = guards_hold(at)
  at = run(at, ok)
  out[g] = ok and '1' or '0'
end
return table.concat(out)
"#;

/// Sets a listen key. `KEYS`: the version counter, the key→version hash,
/// the log (sorted set by version of `version`), the entries hash
/// (version → encoded change), the change counter. `ARGV`: key, value,
/// time, the wake channel. A value equal to the current one records
/// nothing and returns the current version.
pub const LISTEN_SET: &str = r#"
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur then
  local entry = redis.call('HGET', KEYS[4], cur)
  if entry and string.sub(entry, 1, 4) == 'v1::' then
    local sep = string.find(entry, '\0', 5, true)
    local rest = string.sub(entry, sep + 1)
    local sep2 = string.find(rest, '\0', 1, true)
    local val = string.sub(rest, sep2 + 1)
    if val == ARGV[2] then return tonumber(cur) end
  end
end
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], v)
redis.call('HSET', KEYS[4], v, 'v1::' .. ARGV[3] .. '\0' .. ARGV[1] .. '\0' .. ARGV[2])
redis.call('ZADD', KEYS[3], v, v)
redis.call('INCR', KEYS[5])
redis.call('PUBLISH', ARGV[4], '1')
return v
"#;
