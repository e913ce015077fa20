//! A private `redis-server` for one test: on a unix socket in a temp dir, no TCP port, no
//! persistence, stopped when the test drops it.
//!
//! Debian's `redis-server` is not on every developer's machine, so a test that needs one
//! skips with a printed reason when it is missing. CI installs it and sets
//! `DASHBATCH_REQUIRE_REDIS=1`, which turns that skip into a failure: a green CI run must
//! have run these tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set (to anything but empty or `0`) where a missing `redis-server` is a failure, not a skip.
pub const REQUIRE_VAR: &str = "DASHBATCH_REQUIRE_REDIS";

pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server, or returns `None` after printing why this test skips. Panics when
    /// the server is required (`DASHBATCH_REQUIRE_REDIS`) but cannot start.
    pub fn start(test: &str) -> Option<RedisServer> {
        let required = std::env::var(REQUIRE_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                !required,
                "{test}: redis-server is not installed but {REQUIRE_VAR} is set \
                 (apt-get install redis-server)"
            );
            eprintln!(
                "skipped {test}: redis-server is not installed (apt-get install redis-server; \
                 set {REQUIRE_VAR}=1 to make this a failure)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut server = RedisServer { child: None, dir };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        wait_for_pong(&socket);
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL dashbatch takes (`--redis`).
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Kills the server (SIGKILL) and waits for it: a Redis outage mid-run.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same socket after [`RedisServer::kill`], empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one `redis-cli` command against this server and returns its output, trimmed.
    /// `redis-cli` ships in the same Debian package as the server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls the socket with PING until the server answers (a fresh server takes a few ms), with
/// a deadline so a server that never comes up fails the test instead of hanging it.
fn wait_for_pong(socket: &Path) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) {
            let mut buf = [0u8; 16];
            if stream.write_all(b"PING\r\n").is_ok()
                && stream
                    .read(&mut buf)
                    .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not answer on {} within 20 s",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
