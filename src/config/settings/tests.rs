use clap::builder::ValueParser;
use clap::{Arg, Args, Command, FromArgMatches};

use super::*;
use crate::config::job::JobFile;

/// `run`'s settings as clap sees them.
fn command() -> Command {
    Settings::augment_args(Command::new("run").no_binary_name(true))
}

fn parse(flags: &[&str]) -> Settings {
    let matches = command().try_get_matches_from(flags).expect("flags parse");
    Settings::from_arg_matches(&matches).expect("settings")
}

fn load(text: &str) -> Result<Settings, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.toml");
    std::fs::write(&path, format!("manifest = \"m.csv\"\n{text}\n")).unwrap();
    JobFile::load(&path).map_err(|e| e.to_string())
}

/// Whether `arg`'s values are of the type `parser` makes.
fn is(arg: &Arg, parser: ValueParser) -> bool {
    arg.get_value_parser().type_id() == parser.type_id()
}

fn layers(flags: &[&str], job: &str) -> Layers {
    Layers {
        flags: parse(flags),
        job: load(job).expect("job loads"),
        job_path: Some(PathBuf::from("j.toml")),
    }
}

/// The bug a clap `default_value` would bring: a flag left out would still look given and
/// beat the job file. And a flag given with the default's value must still beat it.
#[test]
fn a_flag_left_out_leaves_the_job_file_its_say_and_a_flag_given_beats_it() {
    let from_job = layers(&[], "concurrency = 7\ndrain_timeout = 5");
    assert_eq!(CONCURRENCY.pick(&from_job, |s| s.concurrency).unwrap(), 7);
    assert_eq!(
        DRAIN_TIMEOUT
            .pick(&from_job, |s| s.drain_timeout_s)
            .unwrap(),
        5
    );
    let flagged = layers(&["--concurrency", "32"], "concurrency = 7");
    assert_eq!(CONCURRENCY.pick(&flagged, |s| s.concurrency).unwrap(), 32);
    let neither = layers(&[], "");
    assert_eq!(CONCURRENCY.pick(&neither, |s| s.concurrency).unwrap(), 32);
}

/// Every flag is a job-file key of the same name, so a job file can say whatever the
/// command line can.
#[test]
fn every_flag_is_a_job_file_key() {
    let command = command();
    assert!(command.get_arguments().count() >= 18);
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str();
        let value = if arg.get_action().takes_values() {
            // A value of the right type for each kind of setting.
            match key {
                "model_rps" => "2.5".to_owned(),
                "api" => "\"native\"".to_owned(),
                "params" => "{ temperature = 0.5 }".to_owned(),
                "stream" => "\"always\"".to_owned(),
                "shard" => "\"2/3\"".to_owned(),
                "redis" => "\"redis://h:6379/0\"".to_owned(),
                "format" => "\"jsonl\"".to_owned(),
                _ if is(arg, ValueParser::path_buf()) || is(arg, ValueParser::string()) => {
                    "\"x\"".to_owned()
                }
                _ => "5".to_owned(),
            }
        } else {
            "true".to_owned()
        };
        load(&format!("{key} = {value}")).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
}

/// Every setting that is a path is taken relative to the job file's folder.
#[test]
fn every_path_in_a_job_file_is_relative_to_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.toml");
    let paths: Vec<_> = command()
        .get_arguments()
        .filter(|a| is(a, ValueParser::path_buf()))
        .map(|a| a.get_id().as_str().to_owned())
        .collect();
    assert!(paths.len() >= 5, "{paths:?}");
    let text: String = paths
        .iter()
        .map(|key| format!("{key} = \"rel/{key}\"\n"))
        .collect();
    std::fs::write(&path, format!("manifest = \"m.csv\"\n{text}")).unwrap();
    let mut job = JobFile::load(&path).unwrap();
    let resolved: Vec<_> = job
        .paths_mut()
        .into_iter()
        .flatten()
        .map(|p| p.clone())
        .collect();
    assert_eq!(resolved[0], dir.path().join("m.csv"));
    for key in &paths {
        assert!(
            resolved.contains(&dir.path().join(format!("rel/{key}"))),
            "{key} is not resolved against the job file's folder: {resolved:?}"
        );
    }
}

/// The help shows each default from the constant the run uses, never a copy of it.
#[test]
fn the_help_shows_each_default_from_its_constant() {
    let help = command().render_long_help().to_string();
    for (key, default) in defaults() {
        let flag = format!("--{}", key.replace('_', "-"));
        let entry = help
            .split(&flag)
            .nth(1)
            .unwrap_or_else(|| panic!("{flag} is not in the help"));
        let entry = entry.split("\n      --").next().unwrap_or(entry);
        let flat = entry.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(&format!("[default: {default}]")),
            "{flag}: {flat}"
        );
    }
    assert!(
        help.contains("[default: 32]") && help.contains("[default: 300]"),
        "{help}"
    );
}

/// A new setting either shows its default or is named here as having none (or one that
/// depends on other settings, spelt out in its help).
#[test]
fn every_setting_states_its_default_or_has_none() {
    let without = [
        "emulator",
        "api_key_file",
        "model_rps",
        "model_tpm",
        "summary_json",
        "metrics_textfile",
        "params",
        "shard",
        "limit",
        "redis",
        // OUT's extension decides it.
        "format",
        "excel_bom",
    ];
    for arg in command().get_arguments() {
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let key = arg.get_id().as_str();
        assert!(
            help.contains("[default: ") != without.contains(&key),
            "{key}: {help}"
        );
    }
}

#[test]
fn library_defaults_are_the_settings_defaults() {
    let client = ClientConfig::default();
    assert_eq!(client.request_timeout.as_secs(), REQUEST_TIMEOUT_S.default);
    assert_eq!(
        client.upload_timeout.as_secs(),
        u64::from(UPLOAD_TIMEOUT_S.default)
    );
    assert_eq!(
        client.upload_stall_timeout.as_secs(),
        u64::from(UPLOAD_STALL_TIMEOUT_S.default)
    );
    assert_eq!(RetryPolicy::default().max_attempts, MAX_ATTEMPTS.default);
    assert_eq!(
        CredentialOptions::default().qps.get(),
        CREDENTIAL_QPS.default
    );
}

#[test]
fn a_job_files_api_is_matched_without_case_and_a_wrong_one_named() {
    assert_eq!(
        load("api = \"Native\"").unwrap().api,
        Some(ApiChoice::Native)
    );
    let err = load("api = \"openai\"").unwrap_err();
    assert!(
        err.contains("j.toml") && err.contains("openai") && err.contains("\"compatible\""),
        "{err}"
    );
}

#[test]
fn a_job_files_value_out_of_range_names_the_file_the_key_and_the_range() {
    let err = CONCURRENCY
        .pick(&layers(&[], "concurrency = 0"), |s| s.concurrency)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "job file j.toml: concurrency = 0 is out of range; use 1..=100000"
    );
    let err = OUTAGE_TIMEOUT
        .pick(&layers(&[], "outage_timeout = 0"), |s| s.outage_timeout_s)
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("use 1 or more"), "{err}");
    let err = layers(&[], "model_rps = 0.0")
        .model_rps()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model_rps = 0") && err.contains("1000000"),
        "{err}"
    );
}

#[test]
fn an_out_of_range_flag_is_a_usage_error_naming_the_flag() {
    for (flag, value) in [
        ("--concurrency", "0"),
        ("--credential-qps", "101"),
        ("--upload-timeout-s", "86401"),
        ("--outage-timeout", "0"),
        ("--model-rps", "1e9"),
    ] {
        let err = command()
            .try_get_matches_from([flag, value])
            .unwrap_err()
            .to_string();
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

/// `--param KEY=VALUE` reads VALUE as JSON when it parses, else as a string; the job file's
/// `[params]` come first and each flag goes over them key by key.
#[test]
fn params_read_values_as_json_else_text_and_flags_go_over_the_job_file() {
    let layers = layers(
        &[
            "--param",
            "temperature=0.2",
            "--param",
            "stop=END",
            "--param",
            r#"response_format={"type":"json_object"}"#,
        ],
        "[params]\ntemperature = 0.9\nseed = 3\n",
    );
    let params = serde_json::Value::Object(layers.params());
    assert_eq!(
        params,
        serde_json::json!({"temperature": 0.2, "stop": "END", "seed": 3,
            "response_format": {"type": "json_object"}})
    );
    assert!(
        parse_param("temperature")
            .unwrap_err()
            .contains("KEY=VALUE")
    );
    assert!(
        parse_param("messages=[]")
            .unwrap_err()
            .contains("set by dashbatch")
    );
}

/// `stream` in a job file is matched without regard to case, a flag beats it, and a word
/// that is not a setting is refused naming the three that are.
#[test]
fn stream_is_a_job_key_and_a_flag() {
    assert_eq!(
        load("stream = \"Never\"").unwrap().stream,
        Some(StreamChoice::Never)
    );
    let flagged = layers(&["--stream", "always"], "stream = \"never\"");
    assert_eq!(flagged.given(|s| s.stream), Some(StreamChoice::Always));
    let e = load("stream = \"sometimes\"").unwrap_err();
    assert!(e.contains("\"auto\", \"always\" or \"never\""), "{e}");
}

/// The clocks are named alike (`--…-timeout-s`); the names before that still work, as
/// flags and as job-file keys, but are not shown in `--help`.
#[test]
fn the_timeout_flags_end_in_s_and_the_old_names_are_hidden_aliases() {
    for flags in [
        ["--drain-timeout-s", "5", "--outage-timeout-s", "7"],
        ["--drain-timeout", "5", "--outage-timeout", "7"],
    ] {
        let s = parse(&flags);
        assert_eq!((s.drain_timeout_s, s.outage_timeout_s), (Some(5), Some(7)));
    }
    for job in [
        "drain_timeout_s = 5\noutage_timeout_s = 7",
        "drain_timeout = 5\noutage_timeout = 7",
    ] {
        let s = load(job).expect("job loads");
        assert_eq!((s.drain_timeout_s, s.outage_timeout_s), (Some(5), Some(7)));
    }
    let help = command().render_help().to_string();
    assert!(help.contains("--drain-timeout-s") && help.contains("--outage-timeout-s"));
    assert!(
        !help.contains("--drain-timeout ") && !help.contains("--outage-timeout "),
        "{help}"
    );
}
