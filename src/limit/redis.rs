//! The limiter every dashbatch process of one account shares through Redis (`--redis`): a
//! GCRA whose state (a key's theoretical arrival time, and the period it was computed with)
//! lives in Redis and is decided by one Lua script, so that N processes on N hosts spend one
//! account's limits together.
//!
//! The script reads the clock with `TIME`: the hosts' clocks never enter a decision, so a
//! host whose clock is off neither overspends nor starves. It takes the cost and the rate of
//! the call being served (the emission interval and the burst tolerance) and either spends
//! the units and answers 0, or spends nothing and answers how long until they would fit.
//! Spending nothing on a refusal is what keeps an acquisition cancel-safe (the [`Limiter`]
//! contract): a caller that stops waiting leaves no booking behind. Each key expires when
//! its bucket is full again, when it is the same as no key at all, so nothing accumulates.
//!
//! Keys: `dashbatch:v1:<account fingerprint>:<kind>:<model>` (see `shared`). The caller's key
//! is a model, or `model<TAB>sub` for a second limit of the model (pacing's tokens), which
//! becomes the kind `<kind>.<sub>`.
//!
//! # When Redis fails: fail closed
//! An acquisition waits for Redis, within `--redis-timeout-s` (`Shared::call`); past it the
//! run stops like an interrupt and the acquisition never completes (its callers race it
//! against the run's stop). We chose this over falling back to local limits: N processes
//! falling back to local limits would each take the whole quota, N times the limit, exactly
//! when the service is most fragile (a Redis outage often comes with a wider one). A run
//! stopped this way is resumed by the next run, which loses nothing.
//!
//! # What one process learns
//! The rate a caller passes is decided by `pipeline::pacing`, and the script enforces
//! whatever rate the latest call passed, re-timing what the key owes. What one process
//! learns (a cut after a 429, the slow-start ramp) is shared by `shared::pace`, so that every
//! process passes the same rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use redis::Script;

use super::{Cost, Limiter, Rate};
use crate::shared::Shared;

/// GCRA, one call of it: `KEYS[1]` the key; `ARGV[1]` the emission interval (µs per unit,
/// a decimal), `ARGV[2]` the burst tolerance (units), `ARGV[3]` the cost (units);
/// `ARGV[4]`, for tests only, the time in µs instead of `TIME`. Answers 0 when the units
/// were spent, else the µs to wait before asking again (at least 1).
///
/// Numbers go back to Redis through `%.17g`: Lua's own conversion keeps 14 digits, and a
/// time in µs has 16.
pub const GCRA_SCRIPT: &str = r#"
local period = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local state = redis.call('HMGET', KEYS[1], 'tat', 'period')
local tat = tonumber(state[1]) or now
local was = tonumber(state[2]) or period
-- What is owed, in µs, counted from now: never as a difference of two instants near 1.7e15,
-- whose doubles are 0.25 µs apart, so that `now + period - now` can exceed `period` and a
-- call on an idle key would be refused forever (answered "wait 1 µs"). What is owed,
-- counted in units, is owed at the new rate.
local owed = 0
if tat > now then
  owed = tat - now
  if was ~= period then
    owed = owed * period / was
  end
end
-- A cost over the burst would never fit; it goes once nothing is owed.
local room = period * math.max(burst, cost)
local need = owed + period * cost
if need > room then
  return math.max(1, math.ceil(need - room))
end
local after = now + need
redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', after), 'period', string.format('%.17g', period))
-- Full again at `after`: from then on the key means what no key means.
redis.call('PEXPIRE', KEYS[1], math.ceil(need / 1000) + 1)
return 0
"#;

/// A [`Limiter`] whose keys live in Redis, shared by every process of the account.
pub struct RedisLimiter {
    shared: Shared,
    /// What this limiter's keys count (`credentials`, `pace`), part of each key's name.
    kind: &'static str,
    script: Script,
    /// Per key, a FIFO turn among this process's waiters: one of them asks Redis at a time,
    /// the way `LocalLimiter`'s turn does, instead of every waiter polling the script.
    /// Bounded by the keys (models) of the run.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl RedisLimiter {
    pub fn new(shared: Shared, kind: &'static str) -> RedisLimiter {
        RedisLimiter {
            shared,
            kind,
            script: Script::new(GCRA_SCRIPT),
            turns: Mutex::default(),
        }
    }

    /// The Redis key of a caller's key.
    pub fn key(&self, key: &str) -> String {
        match key.split_once('\t') {
            Some((model, sub)) => self.shared.key(&format!("{}.{sub}", self.kind), model),
            None => self.shared.key(self.kind, key),
        }
    }

    fn turn(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        // Nothing panics while holding this lock; if something did, the map is still valid.
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(turns.entry(key.to_owned()).or_default())
    }
}

/// The script's arguments for one acquisition.
fn args(rate: Rate, units: u32) -> [String; 3] {
    [
        format!("{}", rate.period().as_secs_f64() * 1e6),
        rate.burst().get().to_string(),
        units.to_string(),
    ]
}

impl Limiter for RedisLimiter {
    fn acquire<'a>(&'a self, key: &'a str, rate: Rate, cost: Cost) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let units = cost.units();
            if units == 0 {
                return;
            }
            let turn = self.turn(key);
            let _turn = turn.lock().await;
            let redis_key = self.key(key);
            let [period, burst, units] = args(rate, units);
            loop {
                let answer = self
                    .shared
                    .call(|mut conn| {
                        // EVALSHA, and EVAL when Redis does not know the script (a restart).
                        let mut invocation = self.script.key(&redis_key);
                        invocation.arg(&period).arg(&burst).arg(&units);
                        async move { invocation.invoke_async::<u64>(&mut conn).await }
                    })
                    .await;
                match answer {
                    Ok(0) => return,
                    Ok(wait_us) => tokio::time::sleep(Duration::from_micros(wait_us)).await,
                    // Fail closed: no grant without Redis. The run is stopping (Shared told
                    // the pipeline); its callers race this against that stop.
                    Err(_) => std::future::pending().await,
                }
            }
        })
    }
}
