//! What the service counted: the send times of the answered calls, the counts successful
//! calls were accepted at, and how long a pause takes to drain a window. A limit that counts
//! every call refuses from one count on, so these counts are the limit's own figures.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Aimd, FIRST_PAUSE, PAUSE_STEP, SETTLE};

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
