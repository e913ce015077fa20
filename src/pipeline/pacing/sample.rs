//! Counting model-call outcomes over the last second, in constant memory whatever the rate.

use std::time::{Duration, Instant};

/// Calls answered, and how many of them 429.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tally {
    pub ok: u32,
    pub throttled: u32,
}

impl Tally {
    pub(super) fn add(&mut self, throttled: bool) {
        let n = if throttled {
            &mut self.throttled
        } else {
            &mut self.ok
        };
        *n = n.saturating_add(1);
    }

    pub(super) fn calls(self) -> u32 {
        self.ok.saturating_add(self.throttled)
    }

    pub(super) fn share(self) -> f64 {
        match self.calls() {
            0 => 0.0,
            n => f64::from(self.throttled) / f64::from(n),
        }
    }
}

/// Outcomes answered in the last second, kept per tenth of a second: a count over "the last
/// second" costs ten additions and no memory per call, whatever the rate.
#[derive(Debug, Clone)]
pub(super) struct LastSecond {
    origin: Instant,
    /// (tenth since `origin`, its tally), indexed by the tenth modulo 10.
    slots: [(u64, Tally); 10],
}

impl LastSecond {
    pub(super) fn new(origin: Instant) -> Self {
        Self {
            origin,
            slots: [(0, Tally::default()); 10],
        }
    }

    fn tenth(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_millis() / 100)
            .unwrap_or(u64::MAX)
    }

    pub(super) fn add(&mut self, now: Instant, throttled: bool) {
        let k = self.tenth(now);
        let slot = &mut self.slots[(k % 10) as usize];
        if slot.0 != k {
            *slot = (k, Tally::default());
        }
        slot.1.add(throttled);
    }

    pub(super) fn tally(&self, now: Instant) -> Tally {
        let k = self.tenth(now);
        self.slots
            .iter()
            .filter(|(t, _)| *t <= k && k - *t < 10)
            .fold(Tally::default(), |a, (_, b)| Tally {
                ok: a.ok.saturating_add(b.ok),
                throttled: a.throttled.saturating_add(b.throttled),
            })
    }

    /// Successes and calls a second over the tenths that [`Self::tally`] counts, which span
    /// 0.9 to 1 s: as counts they would read up to 10% low.
    pub(super) fn per_second(&self, now: Instant) -> (f64, f64) {
        let oldest = self.tenth(now).saturating_sub(9);
        let start = self.origin + Duration::from_millis(oldest.saturating_mul(100));
        let span = now.saturating_duration_since(start).as_secs_f64().max(0.1);
        let tally = self.tally(now);
        (f64::from(tally.ok) / span, f64::from(tally.calls()) / span)
    }
}
