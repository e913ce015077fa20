//! Outages: the service, its upload host, the credential API or one model answering nothing
//! but failures for a while. This module owns when requests pause, which one goes out as a
//! probe, when the outage is over, and when the run gives up. [`Outages`] decides, free of
//! clocks (unit tests drive it with made-up instants); [`gate`] applies its decisions to the
//! retry loops of a run.
//!
//! Per [`Scope`], a *streak* is the failures since the last success there:
//! - The scope pauses once its streak holds at least [`MIN_FAILURES`] failures and has lasted
//!   [`DETECT`] (or a quarter of the outage timeout, if that is less). Retries and pacing
//!   handle anything shorter; a pause is for when they are only burning attempts.
//! - While paused, requests in the scope wait, so rows hold instead of failing, and no new
//!   row gets far. One request at a time goes out as a probe, [`FIRST_GAP`] after the pause,
//!   then at gaps that double up to [`MAX_GAP`]. A failed probe does not count against its
//!   row's attempts.
//! - Any success in the scope ends the outage (a probe, or a request sent before the pause).
//! - Once the streak has lasted the outage timeout, one more probe goes out; if it fails too
//!   (or any request of the scope does), the run gives up (the caller stops it).
//!
//! Which answers count, per scope: for the service (the base URL: getPolicy and model calls)
//! and the upload host, no answer at all (connect error, timeout) is a failure and any HTTP
//! answer but a 5xx a success. For the credential API and for each model, a 429 is a
//! failure and any other HTTP answer a success. Everything else (a 5xx, a reply cut off
//! mid-body, an error on our side) says nothing either way.
//!
//! Deliberately not here: retrying (`dashscope::retry`), pacing model calls by their 429s
//! (`pacing`), and stopping the run (`stop`).

pub mod gate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dashscope::{ApiError, ErrorKind};

/// How long a scope must fail without a success before it pauses (at most).
pub const DETECT: Duration = Duration::from_secs(30);
/// ...and how many failures that takes at least: a few stray errors after a quiet spell are
/// not an outage.
pub const MIN_FAILURES: u32 = 5;
/// The first probe goes out this long after the pause.
pub const FIRST_GAP: Duration = Duration::from_secs(1);
/// Probes never wait longer than this between them, so a recovery is seen within it.
pub const MAX_GAP: Duration = Duration::from_secs(30);

/// What can be down on its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The service at the base URL, as a whole.
    Service,
    /// The upload host that the upload credentials name.
    Uploads,
    /// The upload-credential API (getPolicy), when it answers only 429.
    Credentials,
    /// One model, when it answers only 429.
    Model(Arc<str>),
}

/// What one answer says about one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Up,
    Down,
    Neither,
}

impl Scope {
    fn signal(&self, result: Result<(), &ApiError>) -> Signal {
        let Err(err) = result else {
            return Signal::Up;
        };
        let answered = err.status.is_some();
        match self {
            Scope::Service | Scope::Uploads => {
                if err.is_no_answer() {
                    Signal::Down
                } else if answered && err.kind != ErrorKind::Server {
                    Signal::Up
                } else {
                    Signal::Neither
                }
            }
            Scope::Credentials | Scope::Model(_) => {
                if err.kind == ErrorKind::Throttled {
                    Signal::Down
                } else if answered {
                    Signal::Up
                } else {
                    Signal::Neither
                }
            }
        }
    }
}

/// What to do with a request about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Send it; `Some(id)` when it is the probe of every paused scope it belongs to.
    Go(Option<u64>),
    /// Hold it until this instant, or (`None`) until a probe is answered.
    Wait(Option<Instant>),
    /// This scope stayed down past the timeout: stop the run.
    GiveUp(Scope),
}

/// A change worth telling the user about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Paused,
    Resumed,
}

/// What an answer changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The request was a probe and its scope is still down: it does not count as one of its
    /// row's attempts, and waits for the next probe.
    pub again: bool,
    pub changes: Vec<(Scope, Change)>,
}

/// Failures since the last success.
#[derive(Debug, Clone, Copy)]
struct Streak {
    since: Instant,
    failures: u32,
}

#[derive(Debug, Clone, Copy)]
struct Paused {
    next_probe: Instant,
    gap: Duration,
    /// The probe in flight.
    probe: Option<u64>,
    /// A request failed once the streak had lasted the timeout.
    gave_up: bool,
}

/// One scope's state. A scope with no failure since its last success has none.
#[derive(Debug, Clone, Copy)]
struct Tracker {
    streak: Streak,
    paused: Option<Paused>,
}

/// The outage state of every scope of a run.
#[derive(Debug)]
pub struct Outages {
    timeout: Duration,
    detect: Duration,
    scopes: HashMap<Scope, Tracker>,
    last_probe: u64,
}

impl Outages {
    /// `timeout`: how long a scope may stay down before the run gives up.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            detect: DETECT.min(timeout / 4),
            scopes: HashMap::new(),
            last_probe: 0,
        }
    }

    /// Whether a request in `scopes` may go out at `now`.
    pub fn admit(&mut self, scopes: &[Scope], now: Instant) -> Admit {
        let mut paused = false;
        let mut due = true;
        let mut until: Option<Instant> = None;
        for scope in scopes {
            let Some(Tracker {
                streak,
                paused: Some(p),
            }) = self.scopes.get(scope)
            else {
                continue;
            };
            paused = true;
            if p.gave_up {
                return Admit::GiveUp(scope.clone());
            }
            if p.probe.is_some() {
                // Wait for its answer; that wakes every waiter.
                due = false;
                continue;
            }
            // Not later than the deadline: the last probe goes out when the time is up.
            let at = p.next_probe.min(streak.since + self.timeout);
            if now < at {
                due = false;
                until = Some(until.map_or(at, |u| u.min(at)));
            }
        }
        if !paused {
            return Admit::Go(None);
        }
        if !due {
            return Admit::Wait(until);
        }
        self.last_probe += 1;
        let id = self.last_probe;
        for scope in scopes {
            if let Some(p) = self.scopes.get_mut(scope).and_then(|t| t.paused.as_mut()) {
                p.probe = Some(id);
            }
        }
        Admit::Go(Some(id))
    }

    /// Records the answer to a request in `scopes` (sent as probe `probe`, if it was one).
    pub fn answered(
        &mut self,
        scopes: &[Scope],
        probe: Option<u64>,
        result: Result<(), &ApiError>,
        now: Instant,
    ) -> Answer {
        let mut answer = Answer::default();
        for scope in scopes {
            let signal = scope.signal(result);
            if signal == Signal::Up {
                if let Some(tracker) = self.scopes.remove(scope)
                    && tracker.paused.is_some()
                {
                    answer.changes.push((scope.clone(), Change::Resumed));
                }
                continue;
            }
            let tracker = match self.scopes.get_mut(scope) {
                Some(t) => t,
                None if signal == Signal::Down => {
                    self.scopes.entry(scope.clone()).or_insert(Tracker {
                        streak: Streak {
                            since: now,
                            failures: 0,
                        },
                        paused: None,
                    })
                }
                None => continue,
            };
            let Tracker { streak, paused } = tracker;
            let was_probe = match paused {
                Some(p) if probe.is_some() && p.probe == probe => {
                    p.probe = None;
                    true
                }
                _ => false,
            };
            if signal == Signal::Down {
                streak.failures = streak.failures.saturating_add(1);
            }
            match paused {
                Some(p) if signal == Signal::Down => {
                    // Any failure answered once the time is up confirms the outage, a probe's
                    // or not (a probe may queue behind requests sent before the pause).
                    if now >= streak.since + self.timeout {
                        p.gave_up = true;
                    }
                    if was_probe {
                        answer.again = true;
                        p.gap = (p.gap * 2).min(MAX_GAP);
                        p.next_probe = now + p.gap;
                    }
                }
                // A probe answered with something that says nothing: another after the
                // same gap.
                Some(p) if was_probe => p.next_probe = now + p.gap,
                Some(_) => {}
                None => {
                    if signal == Signal::Down
                        && streak.failures >= MIN_FAILURES
                        && now.saturating_duration_since(streak.since) >= self.detect
                    {
                        *paused = Some(Paused {
                            next_probe: now + FIRST_GAP,
                            gap: FIRST_GAP,
                            probe: None,
                            gave_up: false,
                        });
                        answer.changes.push((scope.clone(), Change::Paused));
                    }
                }
            }
        }
        answer
    }

    /// Whether any of `scopes` is paused.
    pub fn is_paused(&self, scopes: &[Scope]) -> bool {
        scopes
            .iter()
            .any(|s| self.scopes.get(s).is_some_and(|t| t.paused.is_some()))
    }

    /// When the streak of a paused `scope` began, for messages.
    pub fn down_since(&self, scope: &Scope) -> Option<Instant> {
        self.scopes.get(scope).map(|t| t.streak.since)
    }
}

#[cfg(test)]
mod tests;
