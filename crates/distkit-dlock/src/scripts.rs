//! The Lua scripts that make each lock operation one atomic round trip.

use std::sync::LazyLock;

use redis::Script;

/// Grants the lock if it is free, with a fencing token from the same atomic step.
///
/// KEYS: lock, fence. ARGV: token, ttl in ms.
/// Returns `{1, fencing_token}` on a grant, `{0, pttl_of_holder}` when held.
///
/// The token is `max(previous + 1, server time in microseconds)`: strictly increasing per
/// lock, and still larger than every earlier token after a restart that lost the counter (as
/// long as the server's clock did not step back).
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.len(cur) ~= 32 or string.find(cur, '[^0-9a-f]') then
    return redis.error_reply('DISTKIT_NOT_A_LOCK the key holds a value that is not a distkit lock token')
  end
  return {0, redis.call('PTTL', KEYS[1])}
end
local prev = redis.call('GET', KEYS[2])
local n = 0
if prev then
  n = tonumber(prev)
  if not n then
    return redis.error_reply('DISTKIT_NOT_A_LOCK the fencing counter holds a non-number')
  end
end
n = n + 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now > n then n = now end
redis.call('SET', KEYS[2], string.format('%.0f', n))
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, n}
",
    )
});

/// Deletes the lock if the token matches and announces it on the release channel.
///
/// KEYS: lock. ARGV: token, channel. Returns 1 when released, 0 when not held.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '1')
  return 1
end
return 0
",
    )
});

/// Sets a new TTL if the token matches. It never creates the key, so a renewal racing a release
/// cannot bring the lock back.
///
/// KEYS: lock. ARGV: token, ttl in ms. Returns 1 when extended, 0 when not held.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// Raises the fencing counter to at least ARGV[1] (Redlock: so every node of a granting
/// majority remembers the token that was handed out).
///
/// KEYS: fence. ARGV: minimum.
pub(crate) static FENCE_AT_LEAST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local want = tonumber(ARGV[1])
if want > cur then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
",
    )
});
