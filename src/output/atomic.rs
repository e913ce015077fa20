//! Replacing a file so that a reader, or a crash, sees the old file or the new one and never
//! a mix: temp file in the same folder, fsync, rename, fsync the folder. The results file, the
//! upload cache and the reports are all written this way.
//!
//! A rename replaces whatever the name points at, so two rules keep it to the file meant:
//! a symlink is followed and its target replaced (the link stays a link), and a target that
//! exists but is not a regular file (`/dev/null`, a FIFO, a folder) is never replaced.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Temp files of [`atomic_rewrite`] are named `.{target file name}.dashbatch-XXXXXX.tmp`, so
/// that the ones an interrupted run left can be told apart per target
/// ([`remove_stale_temps`]).
const TEMP_INFIX: &str = ".dashbatch-";
const TEMP_SUFFIX: &str = ".tmp";
/// Random characters in a temp file name (tempfile's alphanumerics).
const TEMP_RANDOM: usize = 6;

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn temp_prefix(target: &Path) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(target.file_name().unwrap_or_default());
    prefix.push(TEMP_INFIX);
    prefix
}

/// Links followed in a row before [`resolve_links`] gives up: Linux's own limit (ELOOP).
const MAX_LINKS: usize = 40;

/// `path` with any symlinks in its last component followed, to the file a write through it
/// would reach (which need not exist yet). Links in the folders above are left alone: they
/// lead to the same folder, so a lock file or a temp file beside either name is the same
/// file. A loop, or a link that cannot be read, stops the walk where it is; opening the path
/// then reports the problem.
pub fn resolve_links(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let is_link = std::fs::symlink_metadata(&current).is_ok_and(|m| m.file_type().is_symlink());
        let Some(target) = is_link.then(|| std::fs::read_link(&current).ok()).flatten() else {
            return current;
        };
        // A relative target is relative to the link's own folder.
        current = parent_dir(&current).join(target);
    }
    current
}

/// Replaces `out` with `write`'s output atomically: temp file in the same folder, fsync,
/// rename, fsync the folder. A symlink `out` keeps pointing at the replaced file; an `out`
/// that exists but is not a regular file is refused, not replaced. The new file gets the
/// permissions of the one it replaces, or when there is none those of a newly created file
/// (0666 less the umask): tempfile's own 0600 would lock out readers such as a node_exporter
/// running as another user.
pub fn atomic_rewrite(
    out: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let out = &resolve_links(out);
    if let Ok(meta) = std::fs::metadata(out)
        && !meta.is_file()
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is not a regular file; it is never replaced",
                out.display()
            ),
        ));
    }
    let dir = parent_dir(out);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(out))
        .suffix(TEMP_SUFFIX)
        .rand_bytes(TEMP_RANDOM)
        .tempfile_in(dir)?;
    #[cfg(unix)]
    tmp.as_file().set_permissions(permissions_for(out)?)?;
    write(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(out).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// The permissions `target`'s replacement gets: its own, or a new file's.
#[cfg(unix)]
fn permissions_for(target: &Path) -> std::io::Result<std::fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(target) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0o666 & !umask(),
        Err(err) => return Err(err),
    };
    Ok(std::fs::Permissions::from_mode(mode))
}

/// The process umask, read without changing it: `umask(2)` can only be read by setting it,
/// which would race with files other threads create meanwhile. Linux shows it in
/// `/proc/self/status`; elsewhere the common default 022 is assumed.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Umask:"))
                .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Removes the temp files [`atomic_rewrite`] of `target` left behind when the process was
/// killed before the rename. Only names with `target`'s own prefix and exactly the random
/// part tempfile adds are touched, so temp files of other files in the folder are not.
///
/// Call it only while no rewrite of `target` can be running (under its lock).
pub fn remove_stale_temps(target: &Path) -> std::io::Result<()> {
    let prefix = temp_prefix(target);
    let entries = match std::fs::read_dir(parent_dir(target)) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        entries => entries?,
    };
    for entry in entries {
        let entry = entry?;
        if !is_temp_of(&entry.file_name(), &prefix) || !entry.file_type()?.is_file() {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => tracing::info!(
                "removed {}, left by an interrupted run",
                entry.path().display()
            ),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn is_temp_of(name: &OsStr, prefix: &OsStr) -> bool {
    name.as_encoded_bytes()
        .strip_prefix(prefix.as_encoded_bytes())
        .and_then(|rest| rest.strip_suffix(TEMP_SUFFIX.as_bytes()))
        .is_some_and(|random| {
            random.len() == TEMP_RANDOM && random.iter().all(u8::is_ascii_alphanumeric)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn a_symlink_is_followed_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.csv");
        std::fs::write(&real, "old").unwrap();
        let link = dir.path().join("alias.csv");
        std::os::unix::fs::symlink("real.csv", &link).unwrap();
        assert_eq!(resolve_links(&link), real);
        atomic_rewrite(&link, |f| f.write_all(b"new")).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
    }

    #[test]
    fn a_special_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = atomic_rewrite(&fifo, |f| f.write_all(b"x")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "still a FIFO");
    }
}
