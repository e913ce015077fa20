//! A model's first limit: the first 429 of a slow start (its count is the ceiling to test),
//! or of an unpaced start (a window's burst, judged once every call of it has answered).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{
    Aimd, Ceiling, Change, Check, FIRST_HOLD, GROWTH, LIMIT_SHARE, MIN_CALLS, NEAR_CEILING,
    PROBE_AFTER, SETTLE, Window,
};
use crate::pipeline::pacing::sample::Tally;

impl Aimd {
    /// The first 429 of a slow start. The ramp had no 429 until the second before this call
    /// held as many calls as it did, so that count is the limit if there is one: the pace
    /// goes just under it after [`FIRST_PAUSE`], and that count is the ceiling to test. The
    /// second after the pause is the test, and a strict one: under a limit that pace is
    /// never refused, so any 429 in it says the first one was noise (a busy service refuses
    /// in bursts at any pace), the ceiling is dropped and the ramp goes on doubling.
    pub(super) fn first_limit(&mut self, sent: Instant, now: Instant) -> Change {
        self.fresh = false;
        self.unpaced_ok = VecDeque::new();
        // Every process's calls, as the shared gate counted them; else this process's,
        // scaled by the processes sharing the pace.
        let count = self
            .shared_count(sent)
            .unwrap_or_else(|| self.shared_window_before(sent))
            .max(1.0);
        // Calls of every process since this one: the count at the newest grant (this
        // process's calls go out among the others') less the count at this one's.
        let shared_in_flight = self
            .grants
            .back()
            .map(|(_, newest)| (f64::from(*newest) - 1.0 - count).max(0.0));
        self.grants = VecDeque::new();
        // The calls the gate let go after this one that have not answered yet.
        let in_flight = match self.gate.take() {
            Some(_) if shared_in_flight.is_some() => shared_in_flight.unwrap_or(0.0),
            Some(ramp) => {
                let answered = self.sends.len() - self.sends.partition_point(|t| *t <= sent);
                ramp.sent_after(sent).saturating_sub(answered) as f64
            }
            None => self.rate.map_or(0.0, |r| {
                r * now.saturating_duration_since(sent).as_secs_f64()
            }),
        };
        let rate = self.capped(count * NEAR_CEILING);
        let pause = self.drained(count, rate, in_flight, now);
        self.rate = Some(rate);
        self.held = rate;
        self.last_increase = now;
        self.last_decrease = Some(now);
        let resume = now + pause;
        self.active_since = resume;
        // The best measured ceiling there is (the service's own count, at a ramp that met
        // nothing before).
        self.hold = FIRST_HOLD;
        self.ceiling = Some(Ceiling {
            rate: count,
            at: now + (self.hold - PROBE_AFTER),
        });
        self.check = Some(Check::from(resume, 0.0));
        Change { rate, pause }
    }

    /// First 429 after an unpaced start: the limit is not known yet. Pause for a window
    /// (which also empties the service's window), pacing provisionally at what got through
    /// so far, while the burst's remaining answers come in.
    pub(super) fn start_first_burst(&mut self, now: Instant) -> Change {
        self.fresh = false;
        // The rate that held a window without a 429 (not the step that met it).
        self.before_burst = self.rate.map_or(0.0, |r| r.min(self.held));
        let from = now.checked_sub(SETTLE).unwrap_or(now);
        let ok = self.unpaced_ok.iter().filter(|t| **t > from).count();
        self.unpaced_ok = VecDeque::new(); // give the memory back: paced from now on
        let tally = Tally {
            ok: u32::try_from(ok).unwrap_or(u32::MAX),
            throttled: 1,
        };
        self.first_burst = Some(Window {
            from,
            to: now,
            tally,
        });
        let rate = self.capped(f64::from(tally.ok.max(1)) * self.scale * NEAR_CEILING);
        self.rate = Some(rate);
        self.held = rate;
        self.last_decrease = Some(now);
        // A whole window, even after a slow start, whose overshoot a 200 ms drain would
        // empty: calls sent in the drained rest of the window are counted nowhere (the first
        // burst counts the second before its 429, the check the second after the window),
        // and under bursts of noise 429s that left the pace to collapse to a few calls a
        // second (tests/pacing_recovery.rs, measured: 6.7/s). It costs a second's calls
        // once per model.
        self.active_since = now + SETTLE;
        Change {
            rate,
            pause: SETTLE,
        }
    }

    /// Counts an answer into the first burst; one window after its first 429, every call of
    /// the burst has answered, and the pace is set from what got through.
    pub(super) fn count_first_burst(
        &mut self,
        sent: Instant,
        now: Instant,
        throttled: bool,
    ) -> Option<Change> {
        let burst = self.first_burst.as_mut()?;
        if sent > burst.from && sent <= burst.to {
            burst.tally.add(throttled);
        }
        let first = burst.to;
        if now.saturating_duration_since(first) < SETTLE {
            return None;
        }
        let tally = burst.tally;
        self.first_burst = None;
        let got = f64::from(tally.ok.max(1)) * self.scale;
        // Most of a real burst refused: it met a limit, and what got through is that limit.
        // A few refusals in a fraction of a second are no such evidence: the successes only
        // set a starting pace, with no ceiling, and slow start takes it up from there.
        let limited = tally.calls() >= MIN_CALLS && tally.share() >= LIMIT_SHARE;
        // A slow start's first 429s came at the rate it had reached: a ceiling to test, which
        // the check of the next second keeps (the 429s stopped) or drops (they went on, so
        // they were noise). Without it the ramp would double past a limit it just touched.
        if self.before_burst > 0.0 {
            // After a slow start the pace is no small sample's guess: it climbs on gently.
            self.ramp = self.ramp.min(GROWTH);
        }
        self.ceiling = if limited {
            Some(Ceiling { rate: got, at: now })
        } else {
            (self.before_burst > 0.0).then_some(Ceiling {
                rate: self.before_burst,
                at: now,
            })
        };
        // A slow start's rate before the burst held: a burst that met no limit (a few 429s
        // of noise) does not set the pace below it.
        let start = if limited {
            got
        } else {
            got.max(self.before_burst)
        };
        let rate = self.capped(start * NEAR_CEILING);
        self.rate = Some(rate);
        self.last_increase = now;
        self.held = rate;
        let before = if tally.calls() >= MIN_CALLS {
            tally.share()
        } else {
            0.0
        };
        self.check = Some(Check::after(first, before));
        self.judge_check(sent, throttled);
        Some(Change {
            rate,
            pause: Duration::ZERO,
        })
    }
}
