//! The second after a decision: whether the 429s that led to it were the rate's doing (a
//! limit, kept as the ceiling) or refused whatever the rate (noise, learnt and then
//! tolerated).

use std::time::Instant;

use super::{
    Aimd, MIN_CHECK_CALLS, NOISE_BURST, NOISE_MARGIN, NOISE_MAX, NOISE_MEMORY, NOISE_MIN,
    PROBE_AFTER, RATE_DRIVEN,
};
use crate::pipeline::pacing::sample::Tally;

impl Aimd {
    /// Counts an answer into the open check; the first answer to a call sent after it closes
    /// it (its own calls have answered by then, near enough) and gives the verdict.
    pub(super) fn judge_check(&mut self, sent: Instant, throttled: bool) {
        let Some(check) = self.check.as_mut() else {
            return;
        };
        let window = &mut check.window;
        if sent < window.from {
            return;
        }
        if sent < window.to {
            window.tally.add(throttled);
            return;
        }
        let (tally, before) = (window.tally, check.before);
        self.check = None;
        let share = tally.share();
        // Too few calls to tell; or most still refused, more than the noise explains: a
        // cut that fell short of a limit that counts refused calls, and the next cut follows.
        if tally.calls() < MIN_CHECK_CALLS || (share >= RATE_DRIVEN && !self.tolerates(tally)) {
            return;
        }
        // Whatever is still refused at the lower rate is refused whatever the rate.
        self.noise_throttled = self.noise_throttled * NOISE_MEMORY + f64::from(tally.throttled);
        self.noise_calls = self.noise_calls * NOISE_MEMORY + f64::from(tally.calls());
        if share <= before / 2.0 {
            // The lower rate ended the 429s, or most of them: the limit is real, and where
            // it was found.
            self.limit_seen |= self.ceiling.is_some();
        } else if self.scale <= 1.0 {
            // Refused as often at the lower rate: the 429s were not about the rate, and
            // neither, perhaps, were those of an earlier check that seemed to find a limit
            // (a second without a fault burst is common at a few dozen calls a second).
            // Not with a shared pace: this process's share of a second's calls is too few to
            // tell (measured: a ceiling dropped that way let one process double the shared
            // pace to 80 a second against a limit of 40, twice in a run).
            self.ceiling = None;
            self.limit_seen = false;
            self.hold = PROBE_AFTER;
        }
    }

    /// The share of calls refused whatever the rate, as learnt from the checks.
    pub(super) fn noise(&self) -> f64 {
        if self.noise_calls > 0.0 {
            (self.noise_throttled / self.noise_calls).min(NOISE_MAX)
        } else {
            0.0
        }
    }

    /// Whether these 429s are within what the learnt noise explains.
    pub(super) fn tolerates(&self, tally: Tally) -> bool {
        let noise = self.noise();
        noise >= NOISE_MIN
            && f64::from(tally.throttled)
                <= NOISE_MARGIN * noise * f64::from(tally.calls()) + NOISE_BURST
    }
}
