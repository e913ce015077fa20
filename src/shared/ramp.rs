//! A slow start's gate shared by the processes of one account (`--redis`): the calls of
//! every process count in one window, kept in Redis, so that together they ramp up as one
//! process would (`pipeline::pacing::ramp` has the rule and why).
//!
//! The gate is a sorted set `…:ramp:<model>` of the calls it let go (scored by Redis's
//! clock, in µs) and a hash `…:ramp-state:<model>` (the last grant, a sequence for unique
//! members), decided by one Lua script: a call goes if the calls of the last second, with
//! it, stay within max(floor, growth × those of the second before), each window widened by
//! the margin where a call may fall in it and narrowed where it surely does, and it is
//! spaced from the last one; else the script answers how long to wait. A grant answers the
//! count of the last second with the call in it: the count the service will judge the call
//! at, so that the first 429 of the ramp sets the ceiling from every process's calls rather
//! than from this process's share of them scaled up (measured with 4 processes: a first
//! ceiling of 96 against a limit of 40, then 269 calls refused while the cuts brought it
//! down).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Lost, SharedPace};

/// `KEYS[1]` the grants, `KEYS[2]` the state; `ARGV[1]` the floor (calls), `ARGV[2]` the
/// growth a second, `ARGV[3]` the spread (calls are spaced at this times the allowance),
/// `ARGV[4]` the keys' TTL (ms), `ARGV[5]` the margin (µs) by which a call may reach the
/// service earlier or later than the others, relative to its grant. Answers `{count, 0}`
/// for a grant (the calls of the last second, this one included), `{0, µs}` to ask again
/// later.
///
/// Numbers go to Redis through `%.17g`: Lua's own conversion keeps 14 digits, and a time in
/// µs has 16.
pub const RAMP_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local margin = tonumber(ARGV[5])
local function n(x) return string.format('%.17g', x) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', n(now - 2000000))
local last_second = redis.call('ZCOUNT', KEYS[1], '(' .. n(now - 1000000), '+inf')
local window = redis.call('ZCOUNT', KEYS[1], '(' .. n(now - 1000000 - margin), '+inf')
local before = redis.call('ZCOUNT', KEYS[1], '(' .. n(now - 2000000 + margin), n(now - 1000000 - margin))
local allowance = math.max(tonumber(ARGV[1]), math.floor(tonumber(ARGV[2]) * before))
if window + 1 > allowance then
  -- Full: ask again when the oldest call of the window leaves it.
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. n(now - 1000000 - margin), '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  local wait = 1000
  if oldest[2] then wait = math.max(1, math.ceil(tonumber(oldest[2]) + 1000000 + margin - now) + 1) end
  return {0, wait}
end
local last = tonumber(redis.call('HGET', KEYS[2], 'last')) or 0
local next_at = last + 1000000 / (tonumber(ARGV[3]) * allowance)
if now < next_at then
  return {0, math.max(1, math.ceil(next_at - now))}
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('ZADD', KEYS[1], n(now), seq)
redis.call('HSET', KEYS[2], 'last', n(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {last_second + 1, 0}
"#;

/// How long the gate's keys outlive the last call: the window and the one before it.
const TTL: Duration = Duration::from_secs(3);

/// One answer of the shared gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RampTurn {
    /// The call goes now; `count` calls of every process in the last second, it included.
    Go { count: u32 },
    /// Ask again after this long.
    Wait(Duration),
}

/// The gate's rule, as the pacing sets it.
#[derive(Debug, Clone, Copy)]
pub struct RampRule {
    pub floor: f64,
    pub growth: f64,
    pub spread: f64,
    /// How far a call's arrival may move against the others' (see `pipeline::pacing::ramp`).
    pub margin: Duration,
}

impl SharedPace {
    /// The keys (grants, state) of `model`'s shared gate.
    pub fn ramp_keys(&self, model: &str) -> (String, String) {
        (
            self.shared.key("ramp", model),
            self.shared.key("ramp-state", model),
        )
    }

    /// Asks the shared gate of `model` for one call's turn.
    pub async fn ramp_turn(&self, model: &str, rule: RampRule) -> Result<RampTurn, Lost> {
        let (grants, state) = self.ramp_keys(model);
        // Hashed once: this runs for every call of a ramp.
        static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RAMP_SCRIPT));
        let script = &*SCRIPT;
        let (count, wait): (u32, u64) = self
            .shared
            .call(|mut conn| {
                let mut call = script.key(&grants);
                call.key(&state)
                    .arg(format!("{}", rule.floor))
                    .arg(format!("{}", rule.growth))
                    .arg(format!("{}", rule.spread))
                    .arg(TTL.as_millis() as u64)
                    .arg(rule.margin.as_micros() as u64);
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(match count {
            0 => RampTurn::Wait(Duration::from_micros(wait.max(1))),
            count => RampTurn::Go { count },
        })
    }
}
