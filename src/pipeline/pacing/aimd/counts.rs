//! What the service counted: the send times of the answered calls, the counts successful
//! calls were accepted at, and how long a pause takes to drain a window. A limit that counts
//! every call refuses from one count on, so these counts are the limit's own figures.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{
    Aimd, Change, Check, FIRST_PAUSE, JOSTLE_MEMORY, JOSTLE_SLOTS, NEAR_CEILING, PAUSE_STEP, SETTLE,
};

impl Aimd {
    /// Remembers when an answered call was sent, for [`Self::window_before`].
    /// Kept in send order; answers come nearly in that order, so the insertion is near
    /// the back and cheap.
    pub(super) fn record_send(&mut self, sent: Instant) {
        let at = self.sends.partition_point(|t| *t <= sent);
        self.sends.insert(at, sent);
        let newest = *self.sends.back().expect("inserted above");
        while self
            .sends
            .front()
            .is_some_and(|t| newest.saturating_duration_since(*t) >= SETTLE * 2)
        {
            self.sends.pop_front();
        }
    }

    /// Calls sent in the second before `sent` (answered by now; with one latency for all,
    /// that is near enough all of them): under a limit that counts every call, the count
    /// the service refused `sent` at, so the limit itself.
    pub(super) fn window_before(&self, sent: Instant) -> u32 {
        let from = sent.checked_sub(SETTLE).unwrap_or(sent);
        let n =
            self.sends.partition_point(|t| *t < sent) - self.sends.partition_point(|t| *t < from);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// [`Aimd::window_before`] for the pace as a whole: with `--redis` this process sends
    /// about 1/N of a shared pace's calls, so its count stands for N times as many (see
    /// [`Aimd::set_scale`]). A ceiling taken from the bare count would cut the shared pace
    /// to this process's share of it.
    pub(super) fn shared_window_before(&self, sent: Instant) -> f64 {
        f64::from(self.window_before(sent)) * self.scale
    }

    /// Remembers the count a successful call sent at `sent` was accepted at.
    pub(super) fn record_accepted(&mut self, sent: Instant) {
        let count = self.window_before(sent);
        // The largest count of the last two seconds, as a monotonic queue: an entry is
        // dropped once a later one accepted as many.
        while self.accepted.back().is_some_and(|(_, c)| *c <= count) {
            self.accepted.pop_back();
        }
        self.accepted.push_back((sent, count));
        keep_two_seconds(&mut self.accepted, sent);
    }

    /// Whether the service refused a call sent at `sent` at a count under one it accepted
    /// in the last two seconds. A limit that counts calls refuses from one count on, so that
    /// 429 was not the limit's (a busy service's burst of refusals). The counts are ours, by
    /// send time; the service counts arrivals, which the network spaces a little
    /// differently, so an equal count is no proof (measured: calls at a count of 20 were
    /// both accepted and refused under a limit of 20, and taking those 429s for noise left
    /// a probe over the limit for two seconds, every call refused).
    pub(super) fn accepted_before(&self, sent: Instant) -> bool {
        let count = self.window_before(sent);
        self.accepted
            .front()
            .is_some_and(|(t, c)| *c > count && sent.saturating_duration_since(*t) < SETTLE * 2)
    }

    /// Whether a 429 to a call sent at `sent`, the only one of the last second, came while
    /// the rate held under a ceiling that a check confirmed, at the count that ceiling was
    /// found at: a call that the network's jitter pushed over the limit (the service counts
    /// arrivals, a hair apart from our send times), not a lower limit, which refuses at
    /// fewer calls. The limit is where it was found, so the rate stays; the AIMD cut took
    /// three seconds to climb back, and its ceiling, the count of our send times, read one
    /// low and left the pace at 19.8 rather than 19.9 (measured: 0.2 rows/s of issue 11's
    /// request-limit run, in two runs of six).
    pub(super) fn jostled_at_ceiling(&self, sent: Instant, rate: f64) -> bool {
        let Some(ceiling) = self.ceiling.filter(|_| self.limit_seen) else {
            return false;
        };
        // Held a window (no increase since), under the ceiling, not a probe past it.
        let held = self.held >= rate && rate <= ceiling.rate * NEAR_CEILING + 1e-9;
        held && f64::from(self.window_before(sent)) >= ceiling.rate - 1.0
    }

    /// A lone 429 at the ceiling ([`Self::jostled_at_ceiling`]): the rate stays, after a
    /// pause that gives back the place the refused call holds in the service's window.
    ///
    /// A second one within [`JOSTLE_MEMORY`] says the margin under the ceiling is too thin
    /// for this network's jitter: ceiling and rate move down by the margin, a twentieth of
    /// the AIMD cut (measured with a core busy elsewhere: such 429s every 2 to 7 s at 19.9
    /// under a limit of 20, and a cut at the second one left 18.8 rows/s in five runs of
    /// six). The second after it is checked as after a cut: a busy service's bursts of 429s
    /// also come one at a time under a ceiling such a burst set, and any 429 in that second
    /// drops the ceiling (simulated: without the check, a 30-second run of fault bursts held
    /// at 13 calls a second made 517 calls where it had made 3,559).
    pub(super) fn jostled(&mut self, rate: f64, share: f64, now: Instant) -> Change {
        let again = self
            .jostled_at
            .is_some_and(|t| now.saturating_duration_since(t) < JOSTLE_MEMORY);
        self.jostled_at = Some(now);
        let rate = match self.ceiling.as_mut().filter(|_| again) {
            Some(ceiling) => {
                ceiling.rate *= NEAR_CEILING;
                let lower = self.capped(rate * NEAR_CEILING);
                self.rate = Some(lower);
                self.held = lower;
                lower
            }
            None => rate,
        };
        let pause = Duration::from_secs_f64(JOSTLE_SLOTS / rate);
        if again {
            self.check = Some(Check::from(now + pause, share));
        }
        Change { rate, pause }
    }

    /// How long to send nothing before calls at `rate` fit under a limit of `limit` in every
    /// window that still holds calls sent before `now` (with one call to spare for jitter),
    /// counting the answered calls sent since a second ago and `in_flight` more at `now`.
    /// At most [`FIRST_PAUSE`].
    pub(super) fn drained(&self, limit: f64, rate: f64, in_flight: f64, now: Instant) -> Duration {
        let old = |t: Instant| {
            let from = t.checked_sub(SETTLE).unwrap_or(t);
            // This process's calls stand for `scale` times as many (`--redis`).
            let sent = self.sends.iter().filter(|s| **s > from).count() as f64 * self.scale;
            sent + if from < now { in_flight } else { 0.0 }
        };
        let fits = |resume: Instant| {
            (0..)
                .map(|k| (k, resume + Duration::from_secs_f64(f64::from(k) / rate)))
                .take_while(|(_, t)| t.checked_sub(SETTLE).is_none_or(|from| from < now))
                .all(|(k, t)| old(t) + f64::from(k) + 1.0 <= limit - 1.0)
        };
        let mut pause = Duration::ZERO;
        while pause < FIRST_PAUSE && !fits(now + pause) {
            pause += PAUSE_STEP;
        }
        pause.min(FIRST_PAUSE)
    }
}

/// Drops the entries of `queue` (oldest first) sent two seconds or more before `newest`.
pub(super) fn keep_two_seconds<T>(queue: &mut VecDeque<(Instant, T)>, newest: Instant) {
    while queue
        .front()
        .is_some_and(|(t, _)| newest.saturating_duration_since(*t) >= SETTLE * 2)
    {
        queue.pop_front();
    }
}
