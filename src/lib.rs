//! dashbatch runs multimodal model jobs in bulk on Alibaba Cloud Model Studio (DashScope).
//!
//! A CSV manifest of `(model, file, prompt)` rows goes in. For each row dashbatch gets an
//! upload credential, uploads the file to DashScope's temporary storage (an `oss://` URL that
//! lives 48 h), calls the model with that URL and writes one results line.
//!
//! # Layout
//! - [`cli`]: argument parsing and the only place that wires the client to the emulator
//!   (`run --emulator`). Turns errors into [`exit`] codes.
//! - [`config`]: the settings of a run, each declared once in `config/settings.rs` (flag,
//!   job-file key, default, range, help), merged from flags over a job file over defaults,
//!   and checked into a typed [`config::RunConfig`] before any I/O.
//! - [`manifest`]: streams manifest rows; a bad row is data, not an error.
//! - [`dashscope`]: the client of the remote service: API key handling, upload credentials
//!   (rate limit, policy cache), the OSS form upload, model calls, error classification and
//!   retries. Written from the documentation alone. A new model API parameter goes in
//!   `dashscope/model/compatible.rs` and `native.rs`, the two APIs' request mappings.
//! - [`limit`]: rate limits behind one async interface, "acquire this cost of this key at
//!   this rate" ([`limit::Limiter`]), in process or shared through Redis (a GCRA in one Lua
//!   script). Upload credentials and model-call pacing both go through it.
//! - [`pipeline`]: orchestration, in three steps: prepare, dispatch (each row a task of its
//!   own, at most `--concurrency` at once, spread over the runtime's threads), finish. One
//!   event per finished row goes to the reporter. Also the per-run upload de-duplication, the adaptive
//!   per-model pacing of model calls (`pipeline/pacing/`: the slow start's gate in `ramp.rs`,
//!   the decisions after 429s in `aimd.rs` and `aimd/`, tokens in `tokens.rs`), outages
//!   (pause, probe, give up), and the compaction of the results file at the end.
//! - [`output`]: the reporter, alone on its thread, that owns the results file, the
//!   statistics and the progress bar; the results file with its resume (`output/results/`),
//!   the run lock, and the JSON and Prometheus reports. Compaction, which re-reads the
//!   manifest and decides which rows were never reached, is orchestration: `pipeline/compact.rs`.
//! - [`shared`]: what several processes share through Redis (`--redis`): the connection,
//!   the key names (version, account fingerprint, kind, model) and the bounded wait for
//!   Redis, past which the run stops; each model's learnt pace (`shared/pace.rs`), the slow
//!   start's window of every process's calls (`shared/ramp.rs`), and the second level of the
//!   upload cache with its per-file lock (`shared/uploads.rs`).
//! - [`upload_cache`]: the record of uploads kept across runs (`.dashbatch/uploads.jsonl`),
//!   appended by a thread of its own.
//! - [`emulator`]: a local server that behaves like DashScope's temporary storage and model
//!   APIs. Also written from the documentation alone: it never imports [`dashscope`], and
//!   [`dashscope`] never imports it, so a misreading in one is caught by the other.
//! - [`spill`]: lists of per-row keys that move to a temp file past a fixed size, so the passes
//!   over every row (duplicate ids, compaction) keep memory flat at any manifest size.
//! - [`validate`]: `dashbatch validate`, the offline check of a manifest, with the row
//!   checks `run` uses ([`pipeline::checks`]).
//! - [`failure`]: the failure codes we write (a new one is a variant there and a line in the
//!   README) and the `error_code` column's value.
//! - [`exit`]: the process exit codes, in one place.
//!
//! Where to start a change:
//! - a new `run` setting: a field of [`config::settings::Settings`] in
//!   `src/config/settings.rs` (its flag, job-file key and help; a number's default and range
//!   beside it), then its use in `src/cli/run/plan.rs`.
//! - a new failure code: a variant in `src/failure.rs`, and its line in the README's
//!   `error_code` row (a test holds the two together).
//! - a new limiter backend: a file in `src/limit/` implementing [`limit::Limiter`].
//! - a new model API parameter: the request mappings `src/dashscope/model/compatible.rs`
//!   and `src/dashscope/model/native.rs`.

pub mod cli;
pub mod config;
pub mod dashscope;
pub mod emulator;
pub mod exit;
pub mod failure;
pub mod limit;
pub mod manifest;
pub mod output;
pub mod pipeline;
pub mod shared;
pub mod spill;
pub mod upload_cache;
pub mod validate;
