use super::*;
use crate::failure::FailureCode;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn refused() -> ApiError {
    ApiError::local(
        ErrorKind::Network,
        FailureCode::Connect,
        "connection refused",
    )
}

fn throttled() -> ApiError {
    ApiError {
        status: Some(429),
        ..ApiError::service(ErrorKind::Throttled, "Throttling.RateQuota", "slow down")
    }
}

fn answered(kind: ErrorKind, status: u16) -> ApiError {
    ApiError {
        status: Some(status),
        ..ApiError::service(kind, "x", "x")
    }
}

const SERVICE: &[Scope] = &[Scope::Service];

/// `n` refused connections to the service, spread evenly over `span` from `t0`.
fn refuse(o: &mut Outages, t0: Instant, n: u32, span: f64) -> Vec<(Scope, Change)> {
    let mut changes = Vec::new();
    for i in 0..n {
        let at = t0 + secs(span * f64::from(i) / f64::from((n - 1).max(1)));
        let answer = o.answered(SERVICE, None, Err(&refused()), at);
        assert!(!answer.again, "only a probe is held back");
        changes.extend(answer.changes);
    }
    changes
}

#[test]
fn a_few_failures_or_a_short_spell_is_not_an_outage() {
    let t0 = Instant::now();
    let mut o = Outages::new(secs(300.0));
    // Many failures, but within less than DETECT.
    assert!(refuse(&mut o, t0, 50, 29.0).is_empty());
    assert_eq!(o.admit(SERVICE, t0 + secs(29.0)), Admit::Go(None));
    // A success ends the streak: 30 s later, a handful more failures start a new one.
    o.answered(SERVICE, None, Ok(()), t0 + secs(29.5));
    assert!(refuse(&mut o, t0 + secs(30.0), 4, 60.0).is_empty());
    assert_eq!(o.admit(SERVICE, t0 + secs(95.0)), Admit::Go(None));
}

#[test]
fn thirty_seconds_of_only_failures_pauses_and_a_probe_that_succeeds_resumes() {
    let t0 = Instant::now();
    let mut o = Outages::new(secs(300.0));
    let changes = refuse(&mut o, t0, MIN_FAILURES, 30.0);
    assert_eq!(changes, [(Scope::Service, Change::Paused)]);
    let paused_at = t0 + secs(30.0);

    // Requests wait for the first probe, FIRST_GAP after the pause.
    assert_eq!(
        o.admit(SERVICE, paused_at),
        Admit::Wait(Some(paused_at + FIRST_GAP))
    );
    let Admit::Go(Some(probe)) = o.admit(SERVICE, paused_at + FIRST_GAP) else {
        panic!("the first probe is due")
    };
    // One probe at a time: the others wait for its answer.
    assert_eq!(o.admit(SERVICE, paused_at + FIRST_GAP), Admit::Wait(None));

    let answer = o.answered(SERVICE, Some(probe), Ok(()), paused_at + secs(1.1));
    assert_eq!(answer.changes, [(Scope::Service, Change::Resumed)]);
    assert!(!answer.again);
    assert_eq!(o.admit(SERVICE, paused_at + secs(1.1)), Admit::Go(None));
}

#[test]
fn failed_probes_back_off_do_not_count_and_the_run_gives_up_at_the_timeout() {
    let t0 = Instant::now();
    let timeout = secs(120.0);
    let mut o = Outages::new(timeout);
    refuse(&mut o, t0, MIN_FAILURES, 30.0);
    let mut now = t0 + secs(30.0);
    let mut gaps = Vec::new();
    let mut probes = 0;
    let gave_up = loop {
        match o.admit(SERVICE, now) {
            Admit::Go(Some(probe)) => {
                probes += 1;
                let answer = o.answered(SERVICE, Some(probe), Err(&refused()), now);
                assert!(answer.again, "a failed probe is held back, not counted");
                assert!(answer.changes.is_empty());
            }
            Admit::Wait(Some(at)) => {
                gaps.push(at - now);
                now = at;
            }
            Admit::GiveUp(scope) => break (scope, now),
            other => panic!("unexpected {other:?} at {:?}", now - t0),
        }
    };
    assert_eq!(gave_up.0, Scope::Service);
    // Gaps double from FIRST_GAP, capped at MAX_GAP; the last probe goes out at the deadline.
    assert_eq!(&gaps[..6], &[1.0, 2.0, 4.0, 8.0, 16.0, 30.0].map(secs));
    assert!(gaps.iter().all(|g| *g <= MAX_GAP));
    assert_eq!(
        gave_up.1,
        t0 + timeout,
        "the last probe at the deadline fails"
    );
    assert!(probes <= 10, "{probes} probes in 90 s");
}

#[test]
fn a_quarter_of_a_short_timeout_is_enough_to_pause() {
    let t0 = Instant::now();
    let mut o = Outages::new(secs(2.0));
    assert_eq!(
        refuse(&mut o, t0, MIN_FAILURES, 0.5),
        [(Scope::Service, Change::Paused)]
    );
}

#[test]
fn any_failure_past_the_deadline_confirms_the_outage() {
    // A probe may queue behind requests sent before the pause (a model's pacer): their
    // failures past the deadline are as good a confirmation.
    let t0 = Instant::now();
    let model = [Scope::Service, Scope::Model("m".into())];
    let mut o = Outages::new(secs(8.0));
    for i in 0..MIN_FAILURES {
        o.answered(
            &model,
            None,
            Err(&throttled()),
            t0 + secs(f64::from(i) * 0.5),
        );
    }
    // Paused at 2 s; the probe goes out at 3 s and queues (it is never answered here).
    assert!(matches!(
        o.admit(&model, t0 + secs(3.0)),
        Admit::Go(Some(_))
    ));
    o.answered(&model, None, Err(&throttled()), t0 + secs(7.9));
    assert_eq!(o.admit(&model, t0 + secs(7.9)), Admit::Wait(None));
    o.answered(&model, None, Err(&throttled()), t0 + secs(8.0));
    assert_eq!(
        o.admit(&model, t0 + secs(8.0)),
        Admit::GiveUp(Scope::Model("m".into()))
    );
}

#[test]
fn scopes_are_independent_and_only_their_own_failures_count() {
    let t0 = Instant::now();
    let m = Scope::Model("qwen-vl-plus".into());
    let other = Scope::Model("qwen-vl-max".into());
    let calls = [Scope::Service, m.clone()];
    let mut o = Outages::new(secs(300.0));
    for i in 0..10 {
        // 429s: the service answers (no outage there), the model refuses.
        let answer = o.answered(
            &calls,
            None,
            Err(&throttled()),
            t0 + secs(f64::from(i) * 4.0),
        );
        if i < 8 {
            assert!(answer.changes.is_empty(), "{i}");
        } else if i == 8 {
            assert_eq!(answer.changes, [(m.clone(), Change::Paused)]);
        }
    }
    let now = t0 + secs(32.5);
    assert!(matches!(o.admit(&calls, now), Admit::Wait(_)));
    assert_eq!(o.admit(&[Scope::Service, other], now), Admit::Go(None));
    assert_eq!(o.admit(&[Scope::Uploads], now), Admit::Go(None));
    assert_eq!(
        o.admit(&[Scope::Service, Scope::Credentials], now),
        Admit::Go(None)
    );
}

#[test]
fn what_counts_as_a_failure_or_a_success() {
    use Signal::*;
    let cut = ApiError::invalid_body(200, None, "truncated");
    let timeout = ApiError::local(ErrorKind::Network, FailureCode::Timeout, "timed out");
    let cases: [(&ApiError, Signal, Signal); 7] = [
        (&refused(), Down, Neither),
        (&timeout, Down, Neither),
        (&throttled(), Up, Down),
        (&answered(ErrorKind::Server, 503), Neither, Up),
        (&answered(ErrorKind::Rejected, 400), Up, Up),
        (&cut, Up, Up),
        (
            &ApiError::local(ErrorKind::Rejected, FailureCode::NotAttempted, "stopped"),
            Neither,
            Neither,
        ),
    ];
    for (err, service, model) in cases {
        assert_eq!(Scope::Service.signal(Err(err)), service, "{err}");
        assert_eq!(Scope::Uploads.signal(Err(err)), service, "{err}");
        assert_eq!(Scope::Model("m".into()).signal(Err(err)), model, "{err}");
        assert_eq!(Scope::Credentials.signal(Err(err)), model, "{err}");
    }
    assert_eq!(Scope::Service.signal(Ok(())), Up);
}

#[test]
fn a_5xx_neither_starts_nor_ends_an_outage() {
    let t0 = Instant::now();
    let mut o = Outages::new(secs(300.0));
    refuse(&mut o, t0, MIN_FAILURES, 30.0);
    let now = t0 + secs(31.0);
    let Admit::Go(Some(probe)) = o.admit(SERVICE, now) else {
        panic!("probe due")
    };
    let answer = o.answered(
        SERVICE,
        Some(probe),
        Err(&answered(ErrorKind::Server, 503)),
        now,
    );
    assert_eq!(
        answer,
        Answer::default(),
        "no change, and it counts as an attempt"
    );
    // Still paused; the next probe after the same gap.
    assert_eq!(o.admit(SERVICE, now), Admit::Wait(Some(now + FIRST_GAP)));
}

#[test]
fn a_success_sent_before_the_pause_ends_it_and_a_stale_probe_id_changes_nothing() {
    let t0 = Instant::now();
    let mut o = Outages::new(secs(300.0));
    refuse(&mut o, t0, MIN_FAILURES, 30.0);
    let Admit::Go(Some(old)) = o.admit(SERVICE, t0 + secs(31.0)) else {
        panic!("probe due")
    };
    let answer = o.answered(SERVICE, None, Ok(()), t0 + secs(31.5));
    assert_eq!(answer.changes, [(Scope::Service, Change::Resumed)]);
    // A new outage; the old probe's answer must not release the new one's probe.
    refuse(&mut o, t0 + secs(40.0), MIN_FAILURES, 30.0);
    let Admit::Go(Some(new)) = o.admit(SERVICE, t0 + secs(71.0)) else {
        panic!("probe due")
    };
    assert_ne!(old, new);
    let answer = o.answered(SERVICE, Some(old), Err(&refused()), t0 + secs(71.5));
    assert!(!answer.again);
    assert_eq!(o.admit(SERVICE, t0 + secs(72.0)), Admit::Wait(None));
}
