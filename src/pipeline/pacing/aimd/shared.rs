//! What a pace shared with the account's other processes (`--redis`, `shared::pace`) adds to
//! the state machine: how many processes share it, a rate (and the ceiling it came from)
//! decided by another process, and the counts of a slow start's gate kept in Redis.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::counts::keep_two_seconds;
use super::{Aimd, Ceiling, Change, FIRST_HOLD, NEAR_CEILING, PROBE_AFTER};
use crate::pipeline::pacing::ramp::Ramp;

impl Aimd {
    /// `processes` share this model's pace (`--redis`): each counts about 1/`processes` of
    /// the calls, so what it counts of throughput is scaled up by that.
    pub fn set_scale(&mut self, processes: u32) {
        self.scale = f64::from(processes.max(1));
    }

    /// Adopts a rate another process set (`shared::pace`), as if this one had decided it:
    /// a lower one as a cut (answers to calls sent before it cut nothing more, and a first
    /// 429 is no longer judged as a first burst: the limit has been met), a higher one as an
    /// increase (the next comes a window later). `pause`: what is left of the cut's pause;
    /// `ceiling`: where the process that set the rate last found the limit, taken as this
    /// one's (with a ceiling of its own, a process that adopted a lower first limit than the
    /// one it found climbed back to its own, past the limit, and the others adopted that).
    pub fn adopt(
        &mut self,
        rate: f64,
        pause: Duration,
        ceiling: Option<f64>,
        now: Instant,
    ) -> Change {
        let rate = self.capped(rate);
        let change = self.adopt_rate(rate, pause, now);
        if let Some(found) = ceiling
            && self.ceiling.is_none_or(|c| (c.rate - found).abs() > 1e-9)
        {
            self.ceiling = Some(Ceiling {
                rate: found,
                at: now + (self.hold.max(PROBE_AFTER) - PROBE_AFTER),
            });
        }
        change
    }

    /// The limit last found, if any, for the processes that share this pace.
    pub fn ceiling(&self) -> Option<f64> {
        self.ceiling.map(|c| c.rate)
    }

    pub(super) fn adopt_rate(&mut self, rate: f64, pause: Duration, now: Instant) -> Change {
        if self.gate.take().is_some() {
            // Another process met the limit first: its pace is this one's, as after a first
            // limit of its own, and so is the ceiling it came from (without it, this process
            // would climb past the limit at its next increase, and the others adopt that).
            self.hold = FIRST_HOLD;
            self.ceiling = Some(Ceiling {
                rate: rate / NEAR_CEILING,
                at: now + (self.hold - PROBE_AFTER),
            });
            self.grants = VecDeque::new();
            self.fresh = false;
            self.unpaced_ok = VecDeque::new();
            self.held = rate;
            self.last_increase = now;
            self.last_decrease = Some(now);
            self.active_since = now + pause;
            self.rate = Some(rate);
            return Change { rate, pause };
        }
        match self.rate {
            Some(old) if rate < old => {
                self.fresh = false;
                self.first_burst = None;
                self.unpaced_ok = VecDeque::new();
                self.ceiling = Some(Ceiling { rate: old, at: now });
                self.held = rate;
                self.last_decrease = Some(now);
                self.active_since = now + pause;
                self.check = None;
            }
            Some(old) if rate > old => {
                self.held = old;
                self.last_increase = now;
            }
            _ => {}
        }
        self.rate = Some(rate);
        Change { rate, pause }
    }

    /// The rule of the gate, for a gate shared through Redis; `None` once out of the ramp.
    pub fn shared_rule(&self) -> Option<crate::shared::RampRule> {
        self.gate.as_ref().map(Ramp::shared_rule)
    }

    /// The shared gate let a call go at `at`, with `count` calls of every process in the
    /// last second (this one included).
    pub fn granted(&mut self, at: Instant, count: u32) {
        self.grants.push_back((at, count));
        keep_two_seconds(&mut self.grants, at);
    }

    /// The calls of every process in the second before the call sent at `sent`, if the
    /// shared gate counted it: its grant (the last one at or before `sent`) less itself.
    pub(super) fn shared_count(&self, sent: Instant) -> Option<f64> {
        let at = self.grants.partition_point(|(t, _)| *t <= sent);
        let (_, count) = self.grants.get(at.checked_sub(1)?)?;
        Some(f64::from(count.saturating_sub(1)))
    }
}
