//! The Lua scripts that make each lock operation one atomic round trip.

use std::sync::LazyLock;

use redis::Script;

/// Lua shared by the family's scripts: the server's time in ms, keeping a key alive at least
/// `ms`, and the next fencing token of a counter (as in [`ACQUIRE`]).
macro_rules! lua_prelude {
    () => {
        r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function keep(key, ms)
  if redis.call('PTTL', key) < tonumber(ms) then redis.call('PEXPIRE', key, ms) end
end
local function fence(key)
  local prev = redis.call('GET', key)
  local n = 0
  if prev then
    n = tonumber(prev)
    if not n or n ~= math.floor(n) or n < 0 or n >= 9007199254740991 then
      return nil, redis.error_reply('DISTKIT_BAD_FENCE the fencing counter ' .. key .. ' holds ' .. string.sub(prev, 1, 40) .. ', not a whole number below 2^53 - 1')
    end
  end
  n = n + 1
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if us > n then n = us end
  redis.call('SET', key, string.format('%.0f', n))
  return n
end
local function not_a_lock(key)
  local cur = redis.call('GET', key)
  if cur and (string.len(cur) ~= 32 or string.find(cur, '[^0-9a-f]')) then
    return redis.error_reply('DISTKIT_NOT_A_LOCK the lock key ' .. key .. ' holds a value that is not a distkit lock token')
  end
  return nil
end
"
    };
}

/// Wakes the head of a fair queue (dropping expired entries first) when the lock is free.
macro_rules! lua_wake_head {
    () => {
        r"
local function wake_head(lock, queue, expiries, prefix)
  if redis.call('EXISTS', lock) == 1 then return end
  local now = now_ms()
  local gone = redis.call('ZRANGEBYSCORE', expiries, '-inf', now)
  for _, w in ipairs(gone) do redis.call('ZREM', queue, w) end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', expiries, '-inf', now) end
  local head = redis.call('ZRANGE', queue, 0, 0)[1]
  if head then redis.call('PUBLISH', prefix .. head, '1') end
end
"
    };
}

/// Grants the lock if it is free, with a fencing token from the same atomic step.
///
/// KEYS: lock, fence, hand-off marker, waiters (zset token -> entry expiry ms). ARGV: token,
/// ttl in ms, `1` when the caller was just woken by a release message, `1` when a refused
/// caller will wait (it is then counted among the waiters), entry ttl in ms.
/// Returns `{1, fencing_token}` on a grant, `{0, pttl_of_holder}` when held.
///
/// The token is `max(previous + 1, server time in microseconds)`: strictly increasing per
/// lock, and still larger than every earlier token after a restart that lost the counter (as
/// long as the server's clock did not step back).
///
/// Lua counts in doubles, exact only below 2^53: a counter that is not a whole number in
/// `[0, 2^53 - 1)` is refused with an error that names the counter's key, never incremented
/// into a token that does not grow.
///
/// Hand-off: a release while callers wait ([`RELEASE_HANDING_OFF`]) leaves a short-lived
/// marker; while it lasts only a woken waiter may take the free lock, so the releasing worker
/// cannot grab it straight back ahead of the waiters it just woke.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        r"
local function wait_here()
  if ARGV[4] ~= '1' then return end
  redis.call('ZADD', KEYS[4], now_ms() + tonumber(ARGV[5]), ARGV[1])
  keep(KEYS[4], ARGV[5])
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local bad = not_a_lock(KEYS[1])
  if bad then return bad end
  wait_here()
  return {0, redis.call('PTTL', KEYS[1])}
end
local h = redis.call('PTTL', KEYS[3])
if h > 0 and ARGV[3] ~= '1' then
  wait_here()
  return {0, h}
end
if h ~= -2 then redis.call('DEL', KEYS[3]) end
if ARGV[4] == '1' then redis.call('ZREM', KEYS[4], ARGV[1]) end
local n, err = fence(KEYS[2])
if err then return err end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, n}
",
    ))
});

/// A plain waiter that gives up leaves the waiters. KEYS: waiters. ARGV: token.
pub(crate) static PLAIN_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
return redis.call('ZREM', KEYS[1], ARGV[1])
",
    )
});

/// Deletes the lock if the token matches and announces it on the release channel (used for a
/// grant whose caller went away, a write lock, and Redlock).
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

/// The plain lock's release: deletes the lock if the token matches and announces it; when
/// callers wait, sets the hand-off marker for ARGV[3] ms so a woken waiter, not the releasing
/// worker, gets the lock next.
///
/// A fair lock's queue on the same name is woken too (its head may go now).
///
/// KEYS: lock, hand-off marker, waiters, fair queue, fair entry expiries. ARGV: token,
/// channel, hand-off window in ms, fair waiter channel prefix.
/// Returns 1 when released, 0 when not held.
pub(crate) static RELEASE_HANDING_OFF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        lua_wake_head!(),
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], '1')
if redis.call('EXISTS', KEYS[4]) == 1 then wake_head(KEYS[1], KEYS[4], KEYS[5], ARGV[4]) end
if tonumber(ARGV[3]) > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms())
  if redis.call('ZCARD', KEYS[3]) > 0 then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  end
end
return 1
",
    ))
});

/// The fair lock's grant: FIFO through a queue of waiters, each entry with its own expiry.
///
/// KEYS: lock, fence, queue (zset token -> arrival), entry expiries (zset token -> ms).
/// ARGV: token, ttl ms, entry ttl ms, `1` to join the queue when not granted.
/// Returns `{1, fence}` on a grant; `{0, ms}` otherwise, `ms` being when to look again (the
/// holder's pttl, or when the head's entry would expire).
pub(crate) static FAIR_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        r"
local bad = not_a_lock(KEYS[1])
if bad then return bad end
local now = now_ms()
local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
for _, w in ipairs(gone) do redis.call('ZREM', KEYS[3], w) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now) end
local function enqueue()
  if ARGV[4] ~= '1' then return end
  if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
    local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
    local seq = 1
    if last[2] then seq = tonumber(last[2]) + 1 end
    redis.call('ZADD', KEYS[3], seq, ARGV[1])
  end
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[1])
  keep(KEYS[3], ARGV[3])
  keep(KEYS[4], ARGV[3])
end
local held = redis.call('PTTL', KEYS[1])
if held ~= -2 then
  enqueue()
  return {0, held}
end
local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
if head and head ~= ARGV[1] then
  enqueue()
  local until_ms = tonumber(redis.call('ZSCORE', KEYS[4], head) or now) - now
  if until_ms < 1 then until_ms = 1 end
  return {0, until_ms}
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local n, err = fence(KEYS[2])
if err then return err end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, n}
",
    ))
});

/// The fair lock's release: deletes the lock if the token matches and wakes the queue's head
/// (only the head: the others would find they are not first).
///
/// Plain-lock waiters of the same name are woken too.
///
/// KEYS: lock, queue, entry expiries, plain waiters. ARGV: token, waiter channel prefix,
/// plain channel.
pub(crate) static FAIR_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        lua_wake_head!(),
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
wake_head(KEYS[1], KEYS[2], KEYS[3], ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('PUBLISH', ARGV[3], '1') end
return 1
",
    ))
});

/// A fair-lock waiter leaves the queue (gave up, failed or was cancelled); if it was the head
/// and the lock is free, the next waiter is woken.
///
/// KEYS: lock, queue, entry expiries. ARGV: token, waiter channel prefix.
pub(crate) static FAIR_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        lua_wake_head!(),
        r"
local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if head == ARGV[1] then wake_head(KEYS[1], KEYS[2], KEYS[3], ARGV[2]) end
return 1
",
    ))
});

/// A read grant: refused while a writer holds the lock or waits for it (writer preference).
///
/// KEYS: writer, readers (zset token -> expiry ms), waiting writers (zset token -> entry
/// expiry ms), fence. ARGV: token, ttl ms.
pub(crate) static READ_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        r"
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local held = redis.call('PTTL', KEYS[1])
if held ~= -2 then return {0, held} end
local waiting = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if waiting[2] then return {0, tonumber(waiting[2]) - now} end
local n, err = fence(KEYS[4])
if err then return err end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
keep(KEYS[2], ARGV[2])
return {1, n}
",
    ))
});

/// A write grant: when free of readers and writers. A writer that is refused registers as
/// waiting (when ARGV[4] is `1`), which holds new readers back.
///
/// KEYS: writer, readers, waiting writers, fence. ARGV: token, ttl ms, entry ttl ms, join.
pub(crate) static WRITE_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        r"
local bad = not_a_lock(KEYS[1])
if bad then return bad end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local function wait_here()
  if ARGV[4] ~= '1' then return end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
  keep(KEYS[3], ARGV[3])
end
local held = redis.call('PTTL', KEYS[1])
if held ~= -2 then
  wait_here()
  return {0, held}
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then
  wait_here()
  return {0, tonumber(last[2]) - now}
end
redis.call('ZREM', KEYS[3], ARGV[1])
local n, err = fence(KEYS[4])
if err then return err end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, n}
",
    ))
});

/// A waiting writer gives up: when no writer waits any more, readers are woken.
///
/// KEYS: waiting writers. ARGV: token, channel.
pub(crate) static WRITE_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 and redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('PUBLISH', ARGV[2], '1')
end
return 1
",
    )
});

/// Releases a lease kept in a sorted set (a reader, or a semaphore's permits): 1 when it was
/// held and valid. Announces on the channel when others may now get in (ARGV[3] = `always`
/// for a semaphore; otherwise when the last reader left).
///
/// KEYS: leases (zset token -> expiry ms), permit counts (hash; the leases key again for a
/// reader). ARGV: token, channel, `always` or `last`.
pub(crate) static ZLEASE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        r"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if KEYS[2] ~= KEYS[1] then redis.call('HDEL', KEYS[2], ARGV[1]) end
local now = now_ms()
if ARGV[3] == 'always' or redis.call('ZCOUNT', KEYS[1], now + 1, '+inf') == 0 then
  redis.call('PUBLISH', ARGV[2], '1')
end
if tonumber(s) <= now then return 0 end
return 1
",
    ))
});

/// Extends a lease kept in a sorted set if it is still valid; never creates one.
///
/// KEYS: leases, companion key kept alive as long (the leases key again if none).
/// ARGV: token, ttl ms.
pub(crate) static ZLEASE_EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        r"
local now = now_ms()
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) <= now then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
keep(KEYS[1], ARGV[2])
keep(KEYS[2], ARGV[2])
return 1
",
    ))
});

/// Whether a lease kept in a sorted set is still valid. KEYS: leases. ARGV: token.
pub(crate) static ZLEASE_HELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        r"
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) > now_ms() then return 1 end
return 0
",
    ))
});

/// Lua for a semaphore: drop expired holders, read the limit and the permits in use.
macro_rules! lua_semaphore {
    () => {
        r"
local function sem_state(holders, counts, limit_key, default)
  local now = now_ms()
  local gone = redis.call('ZRANGEBYSCORE', holders, '-inf', now)
  for _, t in ipairs(gone) do redis.call('HDEL', counts, t) end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', holders, '-inf', now) end
  local raw = redis.call('GET', limit_key)
  local limit = tonumber(raw or default)
  if not limit or limit ~= math.floor(limit) or limit < 1 or limit > 4294967295 then
    return nil, nil, now, redis.error_reply('DISTKIT_BAD_LIMIT the semaphore limit ' .. limit_key .. ' holds ' .. string.sub(raw or default, 1, 40) .. ', not a whole number from 1 to 4294967295')
  end
  local used = 0
  for _, v in ipairs(redis.call('HVALS', counts)) do used = used + (tonumber(v) or 0) end
  return limit, used, now, nil
end
"
    };
}

/// A semaphore grant of ARGV[3] permits when they fit under the limit.
///
/// KEYS: holders (zset token -> expiry ms), counts (hash token -> permits), limit, fence.
/// ARGV: token, ttl ms, permits, default limit.
pub(crate) static SEM_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        lua_semaphore!(),
        r"
local limit, used, now, err = sem_state(KEYS[1], KEYS[2], KEYS[3], ARGV[4])
if err then return err end
if used + tonumber(ARGV[3]) > limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then return {0, tonumber(first[2]) - now} end
  return {0, -1}
end
local n, ferr = fence(KEYS[4])
if ferr then return ferr end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
keep(KEYS[1], ARGV[2])
keep(KEYS[2], ARGV[2])
return {1, n}
",
    ))
});

/// A semaphore's limit and permits in use. KEYS: holders, counts, limit. ARGV: default limit.
pub(crate) static SEM_STATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        lua_prelude!(),
        lua_semaphore!(),
        r"
local limit, used, now, err = sem_state(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
if err then return err end
return {limit, used}
",
    ))
});

/// Sets a semaphore's limit and wakes its waiters. KEYS: limit. ARGV: permits, channel.
pub(crate) static SEM_SET_LIMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], '1')
return 1
",
    )
});

/// Whether a string lock key holds the token. KEYS: lock. ARGV: token.
pub(crate) static HELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
",
    )
});
