use super::*;
use crate::config::settings::{ApiChoice, parse_rps};
use crate::dashscope::Api;

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
    assert_eq!(c.outage_timeout, Duration::from_secs(300));
    assert_eq!(c.model_rps, None);
    assert_eq!(plan.request_timeout, Duration::from_secs(300));
    assert!(!plan.emulator && !c.fresh);
}

/// The library's own defaults (`ClientConfig::default()` and friends, used by anyone who
/// embeds the client) are the ones `run` documents and uses.
#[test]
fn the_library_defaults_are_the_runs_defaults() {
    let plan = plan(args(Path::new("jobs/m.csv")), false).unwrap();
    let client = ClientConfig::default();
    assert_eq!(plan.request_timeout, client.request_timeout);
    assert_eq!(plan.upload_timeout, client.upload_timeout);
    assert_eq!(plan.upload_stall_timeout, client.upload_stall_timeout);
    assert_eq!(
        plan.config.retry.max_attempts,
        crate::dashscope::RetryPolicy::default().max_attempts
    );
    assert_eq!(
        plan.config.credentials.qps,
        crate::dashscope::CredentialOptions::default().qps
    );
}

#[test]
fn flags_beat_the_job_file_and_the_job_file_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("nightly.toml");
    std::fs::write(
        &job,
        "manifest = \"m.csv\"\nconcurrency = 7\nmax_attempts = 2\ndrain_timeout = 5\n\
         model_rps = 2.5\napi = \"native\"\noutage_timeout = 60\n",
    )
    .unwrap();
    let from_job = plan(args(&job), false).unwrap();
    assert_eq!(from_job.config.manifest, dir.path().join("m.csv"));
    assert_eq!(from_job.config.concurrency, 7);
    assert_eq!(from_job.config.retry.max_attempts, 2);
    assert_eq!(from_job.config.drain_timeout, Duration::from_secs(5));
    assert_eq!(from_job.config.model_rps, Some(2.5));
    assert_eq!(from_job.config.api, Api::Native);
    assert_eq!(from_job.config.outage_timeout, Duration::from_secs(60));

    let flagged = plan(
        RunArgs {
            settings: Settings {
                concurrency: Some(900),
                max_attempts: Some(3),
                api: Some(ApiChoice::Compatible),
                outage_timeout_s: Some(2),
                ..Settings::default()
            },
            ..args(&job)
        },
        false,
    )
    .unwrap();
    assert_eq!(flagged.config.concurrency, 900);
    assert_eq!(flagged.config.retry.max_attempts, 3);
    assert_eq!(flagged.config.api, Api::Compatible);
    assert_eq!(flagged.config.drain_timeout, Duration::from_secs(5));
    assert_eq!(flagged.config.outage_timeout, Duration::from_secs(2));
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
        ("outage_timeout = 0", "outage_timeout"),
        ("request_timeout_s = 0", "request_timeout_s"),
    ] {
        let job = dir.path().join("bad.toml");
        std::fs::write(&job, format!("manifest = \"m.csv\"\n{text}\n")).unwrap();
        let err = plan(args(&job), false).err().expect(text).to_string();
        // The key, and the file to fix.
        assert!(
            err.contains(key) && err.contains("bad.toml"),
            "{text}: {err}"
        );
    }
}

#[test]
fn a_job_files_zero_timeout_is_refused_not_made_one() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("j.toml");
    std::fs::write(&job, "manifest = \"m.csv\"\nrequest_timeout_s = 0\n").unwrap();
    let err = plan(args(&job), false).err().expect("refused").to_string();
    assert!(
        err.contains("j.toml") && err.contains("request_timeout_s"),
        "{err}"
    );
}

#[test]
fn a_model_rps_the_pacer_cannot_pace_is_refused() {
    assert_eq!(parse_rps("1000000"), Ok(1e6));
    for text in ["1e9", "4e9", "inf", "0"] {
        let err = parse_rps(text).unwrap_err();
        assert!(err.contains("1000000"), "{text}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("j.toml");
    std::fs::write(&job, "manifest = \"m.csv\"\nmodel_rps = 1e9\n").unwrap();
    let err = plan(args(&job), false).err().expect("refused").to_string();
    assert!(err.contains("model_rps"), "{err}");
}

#[test]
fn a_failed_compaction_reports_the_rows_that_ran_and_says_its_cause_once() {
    let stats = Stats {
        rows_ok: 7,
        ..Stats::default()
    };
    let err = PipelineError::Compact {
        path: PathBuf::from("out.csv"),
        source: pipeline::CompactError::Io(std::io::Error::other("No space left on device")),
        stats: Box::new(stats),
    };
    let (message, code, stats) = judge(err);
    assert_eq!((code, stats.rows_ok), (exit::USAGE, 7));
    assert_eq!(message.matches("No space left").count(), 1, "{message}");
    assert!(message.contains("out.csv"), "{message}");
}

#[test]
fn a_symlinked_output_becomes_its_target_and_the_state_folder_sits_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let alias = dir.path().join("alias.csv");
    std::os::unix::fs::symlink("real/out.csv", &alias).unwrap();
    let plan = plan(
        RunArgs {
            settings: Settings {
                output: Some(alias),
                ..Settings::default()
            },
            ..args(&dir.path().join("m.csv"))
        },
        false,
    )
    .unwrap();
    assert_eq!(plan.config.output, dir.path().join("real/out.csv"));
    assert_eq!(plan.config.state_dir, dir.path().join("real/.dashbatch"));
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
            settings: Settings {
                upload_stall_timeout_s: Some(3),
                ..Settings::default()
            },
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
