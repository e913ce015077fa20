use super::*;

fn args(input: &Path) -> RunArgs {
    RunArgs {
        input: input.to_owned(),
        ..RunArgs::default()
    }
}

#[test]
fn the_documented_defaults_apply_when_neither_flag_nor_job_file_says() {
    let plan = plan(args(Path::new("jobs/m.csv")), false).unwrap();
    let c = &plan.config;
    assert_eq!(c.output, Path::new("jobs/m.results.csv"));
    assert_eq!(c.state_dir, Path::new("jobs/.dashbatch"));
    assert_eq!(c.api, Api::Compatible);
    assert_eq!((c.concurrency, c.upload_concurrency), (32, 16));
    assert_eq!(c.retry.max_attempts, 6);
    assert_eq!(c.credentials.retry.max_attempts, 6);
    assert_eq!(c.credentials.qps.get(), 80);
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.model_rps, None);
    assert_eq!(plan.request_timeout, Duration::from_secs(300));
    assert!(!plan.emulator && !c.fresh);
}

#[test]
fn flags_beat_the_job_file_and_the_job_file_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("nightly.toml");
    std::fs::write(
        &job,
        "manifest = \"m.csv\"\nconcurrency = 7\nmax_attempts = 2\ndrain_timeout = 5\n\
         model_rps = 2.5\napi = \"native\"\n",
    )
    .unwrap();
    let from_job = plan(args(&job), false).unwrap();
    assert_eq!(from_job.config.manifest, dir.path().join("m.csv"));
    assert_eq!(from_job.config.concurrency, 7);
    assert_eq!(from_job.config.retry.max_attempts, 2);
    assert_eq!(from_job.config.drain_timeout, Duration::from_secs(5));
    assert_eq!(from_job.config.model_rps, Some(2.5));
    assert_eq!(from_job.config.api, Api::Native);

    let flagged = plan(
        RunArgs {
            concurrency: Some(900),
            max_attempts: Some(3),
            api: Some(ApiFlag::Compatible),
            ..args(&job)
        },
        false,
    )
    .unwrap();
    assert_eq!(flagged.config.concurrency, 900);
    assert_eq!(flagged.config.retry.max_attempts, 3);
    assert_eq!(flagged.config.api, Api::Compatible);
    assert_eq!(flagged.config.drain_timeout, Duration::from_secs(5));
}

#[test]
fn out_of_range_job_file_values_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("concurrency = 0", "concurrency"),
        ("max_attempts = 1000", "max_attempts"),
        ("credential_qps = 101", "credential_qps"),
        ("model_rps = -3.0", "model_rps"),
        ("model_rps = nan", "model_rps"),
    ] {
        let job = dir.path().join("bad.toml");
        std::fs::write(&job, format!("manifest = \"m.csv\"\n{text}\n")).unwrap();
        let err = plan(args(&job), false).err().expect(text).to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn upload_clocks_come_from_flags_the_job_file_or_defaults() {
    let defaults = plan(args(Path::new("jobs/m.csv")), false).unwrap();
    assert_eq!(defaults.upload_timeout, Duration::from_secs(900));
    assert_eq!(defaults.upload_stall_timeout, Duration::from_secs(60));

    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("j.toml");
    std::fs::write(
        &job,
        "manifest = \"m.csv\"\nupload_timeout_s = 120\nupload_stall_timeout_s = 7\n",
    )
    .unwrap();
    let from_job = plan(args(&job), false).unwrap();
    assert_eq!(from_job.upload_timeout, Duration::from_secs(120));
    assert_eq!(from_job.upload_stall_timeout, Duration::from_secs(7));
    let flagged = plan(
        RunArgs {
            upload_stall_timeout_s: Some(3),
            ..args(&job)
        },
        false,
    )
    .unwrap();
    assert_eq!(flagged.upload_stall_timeout, Duration::from_secs(3));
    assert_eq!(flagged.upload_timeout, Duration::from_secs(120));

    for text in ["upload_timeout_s = 0", "upload_stall_timeout_s = 86401"] {
        std::fs::write(&job, format!("manifest = \"m.csv\"\n{text}\n")).unwrap();
        let err = plan(args(&job), false).err().expect(text).to_string();
        assert!(
            err.contains(text.split(' ').next().unwrap()),
            "{text}: {err}"
        );
    }
}
