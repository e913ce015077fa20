//! One writer per results file: an exclusive `flock(2)` on `OUT.lock`.
//!
//! The kernel drops the lock when the holding process exits, however it exits, so a crashed
//! run never leaves a stale lock to clean up. The lock file keeps the holder's pid only to
//! make the "locked" message useful; the pid is never trusted for anything else.
//!
//! The lock belongs to the file, not to the name it was given: a symlink is followed to its
//! target, and `OUT.lock` sits beside the target, so `-o out.csv` and `-o alias.csv` (a link
//! to it) take the same lock. A hard link has no target to follow, so the results file
//! itself is locked too, when it exists: two names of one inode meet on that lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

use super::atomic::resolve_links;

/// Held for the whole run; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    /// The lock on the results file itself, when it existed at the start.
    _results: Option<File>,
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
        "another dashbatch run is writing the results file {path} under another name (a \
         hard link to it); wait for it to finish, or pass a different -o"
    )]
    HeldByLink { path: PathBuf },
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
    /// Takes the lock for `output` (after following symlinks) without waiting.
    pub fn acquire(output: &Path) -> Result<Self, LockError> {
        let output = &resolve_links(output);
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
        // Only a regular file is opened: opening a FIFO would wait for a writer.
        let regular = std::fs::metadata(output).is_ok_and(|m| m.is_file());
        let results = match regular.then(|| File::open(output)).transpose() {
            Ok(Some(results)) => {
                if !results.try_lock_exclusive().map_err(io)? {
                    return Err(LockError::HeldByLink {
                        path: output.clone(),
                    });
                }
                Some(results)
            }
            // A new file has no other names yet. Anything else (a folder, no permission) is
            // for opening the results file to report.
            Ok(None) | Err(_) => None,
        };
        // Ours now: record who holds it, for the next run's message.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self {
            _file: file,
            _results: results,
            path,
        })
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

    #[test]
    fn a_symlink_or_a_hard_link_to_a_locked_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.csv");
        std::fs::write(&out, "id\n").unwrap();
        let alias = dir.path().join("alias.csv");
        std::os::unix::fs::symlink("out.csv", &alias).unwrap();
        let hard = dir.path().join("hard.csv");
        std::fs::hard_link(&out, &hard).unwrap();
        let held = RunLock::acquire(&alias).unwrap();
        assert_eq!(held.path(), dir.path().join("out.csv.lock"));
        let msg = RunLock::acquire(&out).unwrap_err().to_string();
        assert!(msg.contains("out.csv.lock"), "{msg}");
        let msg = RunLock::acquire(&hard).unwrap_err().to_string();
        assert!(msg.contains("hard link"), "{msg}");
    }
}
