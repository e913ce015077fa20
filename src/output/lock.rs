//! One writer per results file: an exclusive `flock(2)` on `OUT.lock`.
//!
//! The kernel drops the lock when the holding process exits, however it exits, so a crashed
//! run never leaves a stale lock to clean up. The lock file keeps the holder's pid only to
//! make the "locked" message useful; the pid is never trusted for anything else.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

/// Held for the whole run; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another dashbatch run{holder} is writing this results file (lock file {path}); \
         wait for it to finish, or pass a different -o"
    )]
    Held { path: PathBuf, holder: String },
    #[error(
        "cannot create the lock file {path}: {source} (hint: the results file's folder must \
         exist and be writable)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `OUT.lock` beside the results file.
pub fn lock_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    output.with_file_name(name)
}

impl RunLock {
    /// Takes the lock for `output` without waiting.
    pub fn acquire(output: &Path) -> Result<Self, LockError> {
        let path = lock_path(output);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if !file.try_lock_exclusive().map_err(io)? {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            };
            return Err(LockError::Held { path, holder });
        }
        // Ours now: record who holds it, for the next run's message.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_output_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.csv");
        let first = RunLock::acquire(&out).unwrap();
        let err = RunLock::acquire(&out).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("r.csv.lock"), "{msg}");
        drop(first);
        RunLock::acquire(&out).expect("released on drop");
    }
}
