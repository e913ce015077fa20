//! What the processes of one account learn about a model's limit, shared through Redis
//! (`--redis`), so that N processes back off together once rather than N times, and climb
//! together once rather than N times as fast.
//!
//! # Design
//! Each process keeps its own pacing state machine (`pipeline::pacing::aimd`), which decides
//! from its own answers. What it decides, the model's *rate* (for the whole account: the
//! calls of every process are spaced by the shared GCRA at that rate) and the pause that
//! comes with a cut, has one source of truth per (account, model): a hash
//! `…:pace-state:<model>` with `rate`, `until` (the end of the pause, by Redis's clock) and
//! `epoch`, bumped by each change.
//!
//! - A change is compare-and-set on the epoch ([`PACE_SCRIPT`]): a process that last saw
//!   epoch *e* changes the rate only if the epoch is still *e*. Otherwise another process
//!   changed it first, and this one adopts the stored value instead. A burst of 429s seen by
//!   N processes thus cuts once (the others adopt that cut, and treat it as their own, so
//!   the 429s of calls sent before it cut nothing more); a second without 429s raises the
//!   rate once, not N times.
//! - Every process reads the hash a few times a second (and when it first paces a model),
//!   so a change reaches all of them within [`SYNC`]. A process that starts late thereby
//!   begins at the shared pace, not at a slow start of its own.
//! - Each read is also a heartbeat (a sorted set `…:pace-procs:<model>`): the script answers
//!   how many processes paced the model in the last [`LIVE`]. A process sees only its own
//!   answers, about 1/N of the calls; the state machine scales what it counts by N when it
//!   judges throughput (how many calls got through before a limit, whether the rate is used).
//!
//! Deliberately not shared: tokens per call, learnt by each process from its own answers (its
//! rows are its own; the token limit itself, `--model-tpm`, is spent through the shared
//! GCRA), and the state machine's tests of its decisions, which need the answers themselves.
//! Keys expire [`TTL`] after the last process used them.
//!
//! Like every shared operation, a Redis that stays down past `--redis-timeout-s` is
//! [`Lost`]: the run stops. Until then a process paces on its last known state.

use std::time::Duration;

use redis::Script;

use super::{Lost, Shared};

/// How often a process reads the shared pace of a model it is pacing.
pub const SYNC: Duration = Duration::from_millis(250);
/// A process that has not read the shared pace for this long no longer counts among the
/// model's processes.
pub const LIVE: Duration = Duration::from_secs(2);
/// How long the keys of a model outlive the last process that paced it.
pub const TTL: Duration = Duration::from_secs(600);

/// `KEYS[1]` the state hash, `KEYS[2]` the processes' heartbeats; `ARGV[1]` this process's
/// id, `ARGV[2]` the key TTL (ms), `ARGV[3]` the process heartbeat window (µs); to change
/// the rate, also `ARGV[4]` the epoch the change was decided at, `ARGV[5]` the new rate
/// (calls/s), `ARGV[6]` its pause (µs), `ARGV[7]` where the limit was last found ('' if
/// nowhere yet). Answers `{epoch, rate ('' if none), µs of pause left, live processes, 1 if
/// this call changed the rate, ceiling ('' if none)}`.
pub const PACE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
local live = redis.call('ZCARD', KEYS[2])
local s = redis.call('HMGET', KEYS[1], 'epoch', 'rate', 'until', 'ceiling')
local epoch = tonumber(s[1]) or 0
local rate = s[2] or ''
local till = tonumber(s[3]) or 0
local ceiling = s[4] or ''
local changed = 0
if ARGV[5] and tonumber(ARGV[4]) == epoch then
  epoch = epoch + 1
  rate = ARGV[5]
  till = now + tonumber(ARGV[6])
  ceiling = ARGV[7] or ''
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'rate', rate, 'until', string.format('%.17g', till), 'ceiling', ceiling)
  changed = 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {epoch, rate, math.max(0, math.floor(till - now)), live, changed, ceiling}
"#;

/// The shared pace of a model, as one call of the script found it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// 0: no process has set a rate yet.
    pub epoch: u64,
    pub rate: Option<f64>,
    /// What is left of the pause of the last cut.
    pub pause: Duration,
    /// Processes that paced the model in the last [`LIVE`], this one included.
    pub live: u32,
    /// This call's change was stored (the epoch was still the one it was decided at).
    pub changed: bool,
    /// Where the process that set the rate last found the limit.
    pub ceiling: Option<f64>,
}

/// A change of a model's pace that one process proposes to the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    pub rate: f64,
    pub pause: Duration,
    pub ceiling: Option<f64>,
}

/// One process's handle on the shared pace of its account's models. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedPace {
    pub(super) shared: Shared,
    /// Names this process in the heartbeats: random, so two hosts never collide.
    id: String,
}

impl SharedPace {
    pub fn new(shared: Shared) -> SharedPace {
        SharedPace {
            shared,
            id: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The keys (state, heartbeats) of `model`.
    pub fn keys(&self, model: &str) -> (String, String) {
        (
            self.shared.key("pace-state", model),
            self.shared.key("pace-procs", model),
        )
    }

    /// Reads the shared pace of `model` (and counts this process in).
    pub async fn sync(&self, model: &str) -> Result<Seen, Lost> {
        self.run(model, None).await
    }

    /// Sets `model`'s rate to `rate` with `pause` (and the ceiling it was decided under), if
    /// the epoch is still `epoch`; else changes nothing. Either way, answers what is stored.
    pub async fn propose(&self, model: &str, epoch: u64, change: Proposal) -> Result<Seen, Lost> {
        self.run(model, Some((epoch, change))).await
    }

    async fn run(&self, model: &str, change: Option<(u64, Proposal)>) -> Result<Seen, Lost> {
        let (state, procs) = self.keys(model);
        let script = Script::new(PACE_SCRIPT);
        let (epoch, rate, left, live, changed, ceiling): (u64, String, u64, u32, u8, String) = self
            .shared
            .call(|mut conn| {
                let mut call = script.key(&state);
                call.key(&procs)
                    .arg(&self.id)
                    .arg(TTL.as_millis() as u64)
                    .arg(LIVE.as_micros() as u64);
                if let Some((epoch, change)) = change {
                    call.arg(epoch)
                        .arg(format!("{}", change.rate))
                        .arg(change.pause.as_micros() as u64)
                        .arg(change.ceiling.map(|c| format!("{c}")).unwrap_or_default());
                }
                async move { call.invoke_async(&mut conn).await }
            })
            .await?;
        let positive = |s: &str| s.parse().ok().filter(|r: &f64| r.is_finite() && *r > 0.0);
        Ok(Seen {
            epoch,
            rate: positive(&rate),
            ceiling: positive(&ceiling),
            pause: Duration::from_micros(left),
            live: live.max(1),
            changed: changed == 1,
        })
    }
}
