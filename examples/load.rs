//! Load harness: runs the release `dashbatch` binary against `dashbatch emulator`, each as
//! its own process, and prints achieved rows/s next to the bound, the client's CPU per row,
//! the cores it kept busy (CPU time / wall time) and its peak RSS.
//!
//! ```text
//! cargo build --release --examples --bins
//! target/release/examples/load throughput --concurrency 64,256,1024
//! target/release/examples/load throughput --concurrency 64,256,1024 --files 16
//! target/release/examples/load memory --rows 10000,1000000
//! target/release/examples/load big-files
//! target/release/examples/load pacing --model-rps 20 --concurrency 64 --models 1,2
//! target/release/examples/load burst --burst-floor 10 --burst-growth 2 --concurrency 64
//! target/release/examples/load tokens --fit 19 --concurrency 64
//! target/release/examples/load shards --procs 4 --rows 1200 --model-rps 40
//! target/release/examples/load --client-log /tmp/logs pacing   # keep each client's debug log
//! ```
//!
//! Why separate processes: the client's CPU time and peak RSS come from `wait4(2)` on the
//! client alone (the same `struct rusage` that `/usr/bin/time -v` prints, so no extra tool is
//! needed), and the emulator's work does not count against the client. Both still share
//! this machine's cores, which is why the emulator's CPU per row is printed too.
//!
//! The bound: with C rows in flight and per-request latencies L, a row that uploads a new file
//! needs at least `L_upload + L_chat`, so no run beats `C / (L_upload + L_chat)` rows/s; a
//! row whose file another row already uploaded needs `L_chat`, so `C / L_chat`. The one
//! credential fetch per model (policies are reused for 240 s) adds `L_credential` once.
//! Rows are scaled to at least 20 rounds of C, so ramp-up and the last partial round stay
//! within a few percent of the total.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// `--client-arg`s, set once in `main` (a global rather than a parameter of every scenario).
static CLIENT_ARGS: OnceLock<Vec<String>> = OnceLock::new();
/// `--emulator-arg`s, set once in `main`.
static EMULATOR_ARGS: OnceLock<Vec<String>> = OnceLock::new();
/// `--client-log`, set once in `main`.
static CLIENT_LOG: OnceLock<Option<PathBuf>> = OnceLock::new();
/// Numbers the clients' logs.
static CLIENT_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Where a client's stderr goes: nowhere, or a fresh log file under `--client-log` (its
/// filter then logs the pacing's debug events).
fn client_stderr(cmd: &mut Command) -> Result<()> {
    match CLIENT_LOG.get().and_then(Option::as_ref) {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let n = CLIENT_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!("{n:03}.log"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            cmd.env("RUST_LOG", "dashbatch=debug").stderr(file);
        }
        None => {
            cmd.stderr(Stdio::null());
        }
    }
    Ok(())
}

/// Set under injected faults, where a row may exhaust its retries: exit 1 (rows failed) is
/// then a result to report, not a broken run.
static FAILED_ROWS_OK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Parser)]
#[command(about = "dashbatch load harness: the client against a separate emulator process")]
struct Args {
    /// The dashbatch binary; default: `dashbatch` beside this example's folder
    /// (target/release/dashbatch).
    #[arg(long, global = true)]
    bin: Option<PathBuf>,
    /// An argument added to every `dashbatch run`, repeatable
    /// (`--client-arg=--stream=always`), to compare a setting's cost.
    #[arg(long = "client-arg", global = true, allow_hyphen_values = true)]
    client_args: Vec<String>,
    /// An argument added to every `dashbatch emulator`, repeatable
    /// (`--emulator-arg=--latency-jitter-ms=5`: the network's jitter, which a strict limit
    /// sees as calls bunched closer than they were sent).
    #[arg(long = "emulator-arg", global = true, allow_hyphen_values = true)]
    emulator_args: Vec<String>,
    /// Keep each client's debug log (its pacing decisions, with timestamps) in this folder,
    /// as `<run>.log`, instead of discarding its stderr.
    #[arg(long, global = true)]
    client_log: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Rows/s against the bound, with emulator latencies (default chat 100, upload 20,
    /// credential 30 ms).
    Throughput {
        #[arg(long, value_delimiter = ',', default_value = "64,256,1024")]
        concurrency: Vec<usize>,
        /// Rows per run: at least this, and at least 20 × C.
        #[arg(long, default_value_t = 5000)]
        rows: usize,
        /// Distinct files. 0: one per row, so every row uploads (bound C / (L_upload +
        /// L_chat)); N > 0: rows reuse N files (bound C / L_chat).
        #[arg(long, default_value_t = 0)]
        files: usize,
        /// Upload slots; default: the run's C, so uploads never cap rows (the CLI default
        /// of 16 would cap new-file rows at 16 / L_upload).
        #[arg(long)]
        upload_concurrency: Option<usize>,
        #[arg(long, default_value_t = 100)]
        chat_ms: u64,
        #[arg(long, default_value_t = 20)]
        upload_ms: u64,
        #[arg(long, default_value_t = 30)]
        credential_ms: u64,
    },
    /// Peak RSS of the client for manifests of these sizes, four small files reused,
    /// no emulator latency.
    Memory {
        #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
        rows: Vec<usize>,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Adaptive pacing: the emulator limits each model to `--model-rps` calls per second
    /// (a limit the client is not told) and counts refused calls in its window. Rows
    /// alternate between `--models` models; the bound is models × model-rps.
    /// `--model-rps 0 --fault-rate 0.2`: no limit, and 429 bursts among the faults (noise
    /// the pace must not take for a limit); no bound then.
    Pacing {
        #[arg(long, default_value_t = 5000)]
        rows: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// 0: no request limit.
        #[arg(long, default_value_t = 20)]
        model_rps: u32,
        /// The emulator's `--fault-rate`.
        #[arg(long, default_value_t = 0.0)]
        fault_rate: f64,
        /// How many models share the run, one run per value.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        models: Vec<usize>,
        #[arg(long, default_value_t = 100)]
        chat_ms: u64,
    },
    /// Unknown growth limit: the emulator lets a model take at most max(floor, growth × the
    /// second before) calls in any second, and nothing else limits it. The bound is the
    /// ideal ramp's time: floor, then growth × more each second, up to C / L_chat.
    Burst {
        #[arg(long, default_value_t = 2000)]
        rows: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        burst_floor: u32,
        #[arg(long, default_value_t = 2.0)]
        burst_growth: f64,
        #[arg(long, default_value_t = 50)]
        chat_ms: u64,
    },
    /// Unknown token limit: the emulator's `--model-tpm` is set so that about `--fit` calls
    /// a second fit (tokens per call measured by a first, unlimited run). The bound is the
    /// token rate, TPM / 60 a second.
    Tokens {
        #[arg(long, default_value_t = 600)]
        rows: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 19.0)]
        fit: f64,
        #[arg(long, default_value_t = 100)]
        chat_ms: u64,
    },
    /// Several processes, each on its own shard of one manifest, against one emulator that
    /// limits the model to `--model-rps` (unknown to the clients): with one Redis
    /// (`redis-server` on a unix socket in a temp dir) and without. The bound is
    /// `--model-rps`; also the share of calls refused and uploads per distinct file.
    Shards {
        #[arg(long, default_value_t = 4)]
        procs: usize,
        #[arg(long, default_value_t = 1200)]
        rows: usize,
        /// Distinct files; rows reuse them, across shards too.
        #[arg(long, default_value_t = 100)]
        files: usize,
        /// Rows in flight per process.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 40)]
        model_rps: u32,
        #[arg(long, default_value_t = 100)]
        chat_ms: u64,
    },
    /// Peak RSS of the client uploading large distinct files (streamed uploads).
    BigFiles {
        #[arg(long, default_value_t = 20)]
        files: usize,
        #[arg(long, default_value_t = 50)]
        size_mb: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match args.bin {
        Some(bin) => bin,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("cannot find target/release from this example's path")?
            .join("dashbatch"),
    };
    if !bin.is_file() {
        bail!(
            "{} does not exist; build it first: cargo build --release --bins --examples",
            bin.display()
        );
    }
    CLIENT_ARGS.get_or_init(|| args.client_args.clone());
    EMULATOR_ARGS.get_or_init(|| args.emulator_args.clone());
    CLIENT_LOG.get_or_init(|| args.client_log.clone());
    match args.scenario {
        Scenario::Throughput {
            concurrency,
            rows,
            files,
            upload_concurrency,
            chat_ms,
            upload_ms,
            credential_ms,
        } => throughput(
            &bin,
            &concurrency,
            rows,
            files,
            upload_concurrency,
            [chat_ms, upload_ms, credential_ms],
        ),
        Scenario::Memory { rows, concurrency } => memory(&bin, &rows, concurrency),
        Scenario::Pacing {
            rows,
            concurrency,
            model_rps,
            models,
            chat_ms,
            fault_rate,
        } => pacing(
            &bin,
            rows,
            concurrency,
            model_rps,
            &models,
            chat_ms,
            fault_rate,
        ),
        Scenario::Burst {
            rows,
            concurrency,
            burst_floor,
            burst_growth,
            chat_ms,
        } => burst(&bin, rows, concurrency, burst_floor, burst_growth, chat_ms),
        Scenario::Tokens {
            rows,
            concurrency,
            fit,
            chat_ms,
        } => tokens(&bin, rows, concurrency, fit, chat_ms),
        Scenario::BigFiles {
            files,
            size_mb,
            concurrency,
        } => big_files(&bin, files, size_mb, concurrency),
        Scenario::Shards {
            procs,
            rows,
            files,
            concurrency,
            model_rps,
            chat_ms,
        } => shards(&bin, procs, rows, files, concurrency, model_rps, chat_ms),
    }
}

fn throughput(
    bin: &Path,
    concurrencies: &[usize],
    min_rows: usize,
    files: usize,
    upload_concurrency: Option<usize>,
    [chat_ms, upload_ms, credential_ms]: [u64; 3],
) -> Result<()> {
    let per_row_s = if files == 0 {
        (upload_ms + chat_ms) as f64 / 1e3
    } else {
        chat_ms as f64 / 1e3
    };
    println!(
        "latencies: chat {chat_ms} ms, upload {upload_ms} ms, credential {credential_ms} ms; \
         {}; bound = C / {per_row_s} s",
        if files == 0 {
            "one file per row (every row uploads)".to_owned()
        } else {
            format!("{files} files reused (rows after the first {files} reuse uploads)")
        }
    );
    println!(
        "{:>5} {:>7} {:>6} {:>9} {:>9} {:>6} {:>10} {:>9} {:>10} {:>8} {:>8}",
        "C",
        "rows",
        "up_c",
        "rows/s",
        "bound",
        "ratio",
        "cli_us/row",
        "cli_cores",
        "emu_us/row",
        "cli_MB",
        "uploads"
    );
    for &c in concurrencies {
        let rows = min_rows.max(20 * c);
        let up_c = upload_concurrency.unwrap_or(c);
        let job = Job::new(rows, if files == 0 { rows } else { files }, 1024)?;
        let emulator = Emulator::start(
            bin,
            &[
                format!("--chat-latency-ms={chat_ms}"),
                format!("--upload-latency-ms={upload_ms}"),
                format!("--credential-latency-ms={credential_ms}"),
            ],
        )?;
        let run = job.run(bin, &emulator.url, c, up_c)?;
        let emu = emulator.stop()?;
        let bound = c as f64 / per_row_s;
        println!(
            "{:>5} {:>7} {:>6} {:>9.0} {:>9.0} {:>6.3} {:>10.1} {:>9.2} {:>10.1} {:>8.1} {:>8}",
            c,
            rows,
            up_c,
            run.rows_per_s(rows),
            bound,
            run.rows_per_s(rows) / bound,
            run.usage.cpu_us() / rows as f64,
            // Cores in use: the client's CPU time over its wall time.
            run.usage.cpu_us() / 1e6 / run.wall.as_secs_f64(),
            emu.cpu_us() / rows as f64,
            run.usage.max_rss_mb(),
            run.summary["uploads_new"],
        );
    }
    Ok(())
}

fn pacing(
    bin: &Path,
    rows: usize,
    concurrency: usize,
    model_rps: u32,
    model_counts: &[usize],
    chat_ms: u64,
    fault_rate: f64,
) -> Result<()> {
    println!(
        "C = {concurrency}, {rows} rows, 4 files reused, chat {chat_ms} ms, emulator \
         --model-rps {model_rps} per model (not told to the client), --fault-rate {fault_rate}"
    );
    println!(
        "{:>6} {:>9} {:>7} {:>6} {:>7} {:>7}  pace at the end",
        "models", "rows/s", "bound", "ratio", "429s", "429%"
    );
    for &models in model_counts {
        let job = Job::with_models(rows, 4, 1024, models)?;
        let mut flags = vec![format!("--chat-latency-ms={chat_ms}")];
        if model_rps > 0 {
            flags.push(format!("--model-rps={model_rps}"));
        }
        if fault_rate > 0.0 {
            flags.push(format!("--fault-rate={fault_rate}"));
            FAILED_ROWS_OK.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let emulator = Emulator::start(bin, &flags)?;
        let run = job.run(bin, &emulator.url, concurrency, 16)?;
        emulator.stop()?;
        // No limit: no bound (the ratio reads inf).
        let bound = (models as u32 * model_rps) as f64;
        let throttled = run.summary["throttled_seen"].as_f64().unwrap_or(0.0);
        // Each row ends with one successful call; every 429 is one more call.
        let calls = rows as f64 + throttled;
        println!(
            "{:>6} {:>9.1} {:>7.0} {:>6.3} {:>7} {:>6.1}%  {} (rows failed: {})",
            models,
            run.rows_per_s(rows),
            bound,
            run.rows_per_s(rows) / bound,
            throttled,
            100.0 * throttled / calls,
            run.summary["model_pace"],
            run.summary["rows_failed"],
        );
    }
    Ok(())
}

fn shards(
    bin: &Path,
    procs: usize,
    rows: usize,
    files: usize,
    concurrency: usize,
    model_rps: u32,
    chat_ms: u64,
) -> Result<()> {
    println!(
        "{procs} processes, each --shard K/{procs} of {rows} rows ({files} files reused), C = \
         {concurrency} each, chat {chat_ms} ms, emulator --model-rps {model_rps} (not told \
         to the clients)"
    );
    println!(
        "{:>9} {:>9} {:>7} {:>6} {:>7} {:>6} {:>9}",
        "redis", "rows/s", "bound", "ratio", "calls", "429%", "up/file"
    );
    for with_redis in [true, false] {
        let job = Job::new(rows, files, 1024)?;
        let redis = if with_redis {
            Some(Redis::start()?)
        } else {
            None
        };
        let emulator = Emulator::start(
            bin,
            &[
                format!("--chat-latency-ms={chat_ms}"),
                format!("--model-rps={model_rps}"),
            ],
        )?;
        let started = Instant::now();
        let children = (1..=procs)
            .map(|k| {
                let mut cmd = Command::new(bin);
                cmd.arg("run")
                    .arg(job.dir.path().join("manifest.csv"))
                    .args(["--base-url", &emulator.url, "--fresh", "-q"])
                    .arg(format!("--shard={k}/{procs}"))
                    .arg(format!("--concurrency={concurrency}"))
                    .arg("-o")
                    .arg(job.dir.path().join(format!("out-{k}.csv")))
                    .arg("--state-dir")
                    .arg(job.dir.path().join(format!("state-{k}")))
                    .args(CLIENT_ARGS.get().into_iter().flatten())
                    .env("DASHSCOPE_API_KEY", "sk-load")
                    .env_remove("DASHSCOPE_HTTP_BASE_URL")
                    .stdout(Stdio::null());
                client_stderr(&mut cmd)?;
                if let Some(redis) = &redis {
                    cmd.arg(format!("--redis={}", redis.url()));
                }
                cmd.spawn().context("cannot start dashbatch run")
            })
            .collect::<Result<Vec<_>>>()?;
        // Without Redis the processes fight over the limit, and a row may run out of
        // retries: exit 1 (rows failed) is then part of what this compares.
        let mut failed_runs = 0;
        for child in children {
            let (status, _) = wait(child)?;
            match status {
                0 => {}
                1 if !with_redis => failed_runs += 1,
                _ => bail!("dashbatch run exited {status}"),
            }
        }
        let wall = started.elapsed();
        let stats = emulator_stats(&emulator.url)?;
        emulator.stop()?;
        let count = |k: &str| stats[k].as_f64().unwrap_or(0.0);
        // The emulator counts answered calls and refusals apart.
        let refused = count("chat_throttled_rate") + count("chat_throttled_burst");
        let calls = count("chat_calls") + refused;
        let rows_per_s = rows as f64 / wall.as_secs_f64();
        println!(
            "{:>9} {:>9.1} {:>7} {:>6.3} {:>7} {:>5.1}% {:>9.2}",
            if with_redis { "one" } else { "none" },
            rows_per_s,
            model_rps,
            rows_per_s / f64::from(model_rps),
            calls,
            100.0 * refused / calls.max(1.0),
            count("uploads") / files as f64,
        );
        if failed_runs > 0 {
            println!("          ({failed_runs} of {procs} processes ended with rows failed)");
        }
    }
    Ok(())
}

/// The emulator's counters (`GET /__emulator/stats`), over a plain HTTP/1.0 request.
fn emulator_stats(url: &str) -> Result<serde_json::Value> {
    use std::io::{Read, Write};
    let host = url
        .strip_prefix("http://")
        .and_then(|u| u.split('/').next())
        .context("emulator URL")?;
    let mut stream = std::net::TcpStream::connect(host)?;
    write!(
        stream,
        "GET /__emulator/stats HTTP/1.0\r\nHost: {host}\r\n\r\n"
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let body = reply.split("\r\n\r\n").nth(1).context("stats reply")?;
    Ok(serde_json::from_str(body)?)
}

/// A private `redis-server` on a unix socket in a temp dir, no persistence, killed on drop.
struct Redis {
    child: Child,
    dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(dir.path().join("redis.sock"))
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server (apt-get install redis-server)")?;
        let redis = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(redis.dir.path().join("redis.sock")).is_err()
        {
            if Instant::now() > deadline {
                bail!("redis-server did not start within 20 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(redis)
    }

    fn url(&self) -> String {
        format!(
            "redis+unix://{}",
            self.dir.path().join("redis.sock").display()
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls made and refused: each row ends with one successful call, every 429 is one more.
fn refused(run: &Run, rows: usize) -> (f64, f64, String) {
    let throttled = run.summary["throttled_seen"].as_f64().unwrap_or(0.0);
    let share = 100.0 * throttled / (rows as f64 + throttled);
    (
        throttled,
        share,
        run.summary["throttled_by_kind"].to_string(),
    )
}

fn burst(
    bin: &Path,
    rows: usize,
    concurrency: usize,
    floor: u32,
    growth: f64,
    chat_ms: u64,
) -> Result<()> {
    // The ideal ramp: each second takes max(floor, growth × the second before), up to what
    // C calls in flight can do; the last second counts by the share it needs.
    let most = concurrency as f64 * 1000.0 / chat_ms as f64;
    let (mut left, mut last, mut ideal) = (rows as f64, 0.0f64, 0.0);
    while left > 0.0 {
        let this = (growth * last).floor().max(f64::from(floor)).min(most);
        ideal += (left / this).min(1.0);
        left -= this;
        last = this;
    }
    println!(
        "C = {concurrency}, {rows} rows, chat {chat_ms} ms, emulator --burst-floor {floor} \
         --burst-growth {growth} (not told to the client); ideal ramp {ideal:.2} s"
    );
    let job = Job::new(rows, 4, 1024)?;
    let emulator = Emulator::start(
        bin,
        &[
            format!("--chat-latency-ms={chat_ms}"),
            format!("--burst-floor={floor}"),
            format!("--burst-growth={growth}"),
        ],
    )?;
    let run = job.run(bin, &emulator.url, concurrency, 16)?;
    emulator.stop()?;
    let (throttled, share, kinds) = refused(&run, rows);
    let wall = run.wall.as_secs_f64();
    println!(
        "wall {wall:.2} s, {:.2} × the ideal ramp (goal ≤ 1.5), {throttled} 429s = {share:.1}% \
         of calls (goal ≤ 2%) {kinds}",
        wall / ideal
    );
    Ok(())
}

fn tokens(bin: &Path, rows: usize, concurrency: usize, fit: f64, chat_ms: u64) -> Result<()> {
    let job = Job::new(rows, 4, 1024)?;
    let tokens_of = |run: &Run| {
        run.summary["prompt_tokens"].as_f64().unwrap_or(0.0)
            + run.summary["completion_tokens"].as_f64().unwrap_or(0.0)
    };
    // Tokens per call, from an unlimited run of the same rows.
    let emulator = Emulator::start(bin, &[format!("--chat-latency-ms={chat_ms}")])?;
    let per_call = tokens_of(&job.run(bin, &emulator.url, concurrency, 16)?) / rows as f64;
    emulator.stop()?;
    let tpm = (fit * per_call * 60.0).round() as u64;
    let bound = tpm as f64 / 60.0;
    println!(
        "C = {concurrency}, {rows} rows, chat {chat_ms} ms, {per_call:.1} tokens a call, \
         emulator --model-tpm {tpm} ({bound:.0} tokens/s, about {fit} calls/s; not told to \
         the client)"
    );
    let emulator = Emulator::start(
        bin,
        &[
            format!("--chat-latency-ms={chat_ms}"),
            format!("--model-tpm={tpm}"),
        ],
    )?;
    let run = job.run(bin, &emulator.url, concurrency, 16)?;
    emulator.stop()?;
    let (throttled, share, kinds) = refused(&run, rows);
    let rate = tokens_of(&run) / run.wall.as_secs_f64();
    println!(
        "{rate:.0} tokens/s = {:.3} of the token rate (goal ≥ 0.9), {:.1} rows/s, {throttled} \
         429s = {share:.1}% of calls (goal ≤ 5%) {kinds}, pace {}, token pace {}",
        rate / bound,
        run.rows_per_s(rows),
        run.summary["model_pace"],
        run.summary["model_token_pace"]
    );
    Ok(())
}

fn memory(bin: &Path, sizes: &[usize], concurrency: usize) -> Result<()> {
    println!("C = {concurrency}, 4 small files reused, no emulator latency");
    println!(
        "{:>8} {:>9} {:>10} {:>8}",
        "rows", "rows/s", "cli_us/row", "peak_MB"
    );
    for &rows in sizes {
        let job = Job::new(rows, 4, 1024)?;
        let emulator = Emulator::start(bin, &[])?;
        let run = job.run(bin, &emulator.url, concurrency, 16)?;
        emulator.stop()?;
        println!(
            "{:>8} {:>9.0} {:>10.1} {:>8.1}",
            rows,
            run.rows_per_s(rows),
            run.usage.cpu_us() / rows as f64,
            run.usage.max_rss_mb()
        );
    }
    Ok(())
}

fn big_files(bin: &Path, files: usize, size_mb: usize, concurrency: usize) -> Result<()> {
    let job = Job::new(files, files, size_mb << 20)?;
    let emulator = Emulator::start(bin, &[])?;
    // Default upload slots (16), as a user would run it; C = 8 is below that anyway.
    let run = job.run(bin, &emulator.url, concurrency, 16)?;
    emulator.stop()?;
    println!(
        "{files} files × {size_mb} MB at C = {concurrency}: {:.1} s, {:.0} MB/s uploaded, \
         client peak RSS {:.1} MB, {} new uploads",
        run.wall.as_secs_f64(),
        (files * size_mb) as f64 / run.wall.as_secs_f64(),
        run.usage.max_rss_mb(),
        run.summary["uploads_new"]
    );
    Ok(())
}

/// A temp folder with a manifest of `rows` rows over `files` distinct files of `size` bytes.
struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    fn new(rows: usize, files: usize, size: usize) -> Result<Self> {
        Self::with_models(rows, files, size, 1)
    }

    /// Like [`Job::new`], rows alternating between `models` models.
    fn with_models(rows: usize, files: usize, size: usize, models: usize) -> Result<Self> {
        // Models that answer without a stream (Omni answers only as one).
        const MODELS: [&str; 3] = ["qwen-vl-plus", "qwen-vl-max", "qwen2.5-vl-72b-instruct"];
        let models = models.clamp(1, MODELS.len());
        use std::io::Write;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("img"))?;
        for f in 0..files {
            // Distinct content per file (content-addressed uploads would merge equal files),
            // written in 1 MB chunks so large files never sit in this process's memory.
            let mut out = std::io::BufWriter::new(std::fs::File::create(
                dir.path().join(format!("img/{f}.png")),
            )?);
            let mut chunk = vec![0u8; size.min(1 << 20)];
            let mut left = size;
            let mut x = (f as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while left > 0 {
                for b in chunk.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                let n = left.min(chunk.len());
                out.write_all(&chunk[..n])?;
                left -= n;
            }
            out.flush()?;
        }
        let mut manifest =
            std::io::BufWriter::new(std::fs::File::create(dir.path().join("manifest.csv"))?);
        writeln!(manifest, "id,model,file,prompt")?;
        for i in 0..rows {
            writeln!(
                manifest,
                "row-{i},{},img/{}.png,Describe image {i} briefly.",
                MODELS[i % models],
                i % files
            )?;
        }
        manifest.flush()?;
        Ok(Self { dir })
    }

    fn run(&self, bin: &Path, url: &str, concurrency: usize, uploads: usize) -> Result<Run> {
        let summary = self.dir.path().join("summary.json");
        let started = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg(self.dir.path().join("manifest.csv"))
            .args(["--base-url", url, "--fresh", "-q"])
            .arg(format!("--concurrency={concurrency}"))
            .arg(format!("--upload-concurrency={uploads}"))
            .args(CLIENT_ARGS.get().into_iter().flatten())
            .arg("--summary-json")
            .arg(&summary)
            .env("DASHSCOPE_API_KEY", "sk-load")
            .env_remove("DASHSCOPE_HTTP_BASE_URL")
            // The summary line goes to stderr; the figures come from --summary-json.
            .stdout(Stdio::null());
        client_stderr(&mut cmd)?;
        let child = cmd.spawn().context("cannot start dashbatch run")?;
        let (status, usage) = wait(child)?;
        let wall = started.elapsed();
        if status != 0
            && !(status == 1 && FAILED_ROWS_OK.load(std::sync::atomic::Ordering::Relaxed))
        {
            bail!("dashbatch run exited {status}");
        }
        let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary)?)?;
        Ok(Run {
            wall,
            usage,
            summary,
        })
    }
}

struct Run {
    /// Process start to exit: includes start-up and compaction, so it is the conservative
    /// figure.
    wall: Duration,
    usage: Usage,
    summary: serde_json::Value,
}

impl Run {
    fn rows_per_s(&self, rows: usize) -> f64 {
        rows as f64 / self.wall.as_secs_f64()
    }
}

/// `dashbatch emulator --listen 127.0.0.1:0` in its own process.
struct Emulator {
    child: Child,
    url: String,
}

impl Emulator {
    fn start(bin: &Path, flags: &[String]) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(["emulator", "--listen", "127.0.0.1:0"])
            .args(flags)
            .args(EMULATOR_ARGS.get().into_iter().flatten())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start dashbatch emulator")?;
        let stdout = child.stdout.take().context("emulator stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from the emulator: {line:?}"))?
            .to_owned();
        Ok(Self { child, url })
    }

    /// SIGTERM (the emulator exits 0 on it) and its resource usage.
    fn stop(self) -> Result<Usage> {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        Ok(wait(self.child)?.1)
    }
}

/// The child's resource usage, from `struct rusage`.
struct Usage {
    user: Duration,
    sys: Duration,
    /// Kilobytes on Linux (`ru_maxrss`), as `/usr/bin/time -v` reports it.
    max_rss_kb: i64,
}

impl Usage {
    fn cpu_us(&self) -> f64 {
        (self.user + self.sys).as_secs_f64() * 1e6
    }

    fn max_rss_mb(&self) -> f64 {
        self.max_rss_kb as f64 / 1024.0
    }
}

/// Reaps `child` with `wait4(2)`, which returns its exit status and its own `rusage`
/// (std's `Child::wait` discards the latter).
fn wait(child: Child) -> Result<(i32, Usage)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for the child `pid`, which is ours and
    // not yet reaped (Child::wait was never called on it).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if rc != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    // The pid is reaped; dropping `Child` does not wait or kill, so it is safe to drop.
    drop(child);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok((
        code,
        Usage {
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
            max_rss_kb: ru.ru_maxrss,
        },
    ))
}
