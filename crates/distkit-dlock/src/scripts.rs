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
///
/// Lua counts in doubles, exact only below 2^53: a counter that is not a whole number in
/// `[0, 2^53 - 1)` is refused with an error that names the counter's key, never incremented
/// into a token that does not grow.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.len(cur) ~= 32 or string.find(cur, '[^0-9a-f]') then
    return redis.error_reply('DISTKIT_NOT_A_LOCK the lock key ' .. KEYS[1] .. ' holds a value that is not a distkit lock token')
  end
  return {0, redis.call('PTTL', KEYS[1])}
end
local prev = redis.call('GET', KEYS[2])
local n = 0
if prev then
  n = tonumber(prev)
  if not n or n ~= math.floor(n) or n < 0 or n >= 9007199254740991 then
    return redis.error_reply('DISTKIT_BAD_FENCE the fencing counter ' .. KEYS[2] .. ' holds ' .. string.sub(prev, 1, 40) .. ', not a whole number below 2^53 - 1')
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

/// Redlock's release: raises the fencing counter to at least the token of the grant being
/// released (so this server remembers it even if it granted a smaller one), then deletes the
/// lock if the token matches and announces it.
///
/// KEYS: lock, fence. ARGV: token, channel, fencing token. Returns 1 when released.
pub(crate) static RELEASE_RAISING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local want = tonumber(ARGV[3])
if want > cur then
  redis.call('SET', KEYS[2], ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '1')
  return 1
end
return 0
",
    )
});
