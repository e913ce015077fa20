//! The files a run reads and writes, checked before any of them is opened.
//!
//! - The manifest must be a regular file: a run reads it more than once (to count its rows
//!   and find repeated ids, to run them, and twice more to write the results in its order),
//!   and a pipe gives its bytes only once.
//! - OUT must be a regular file, or not exist yet: it is locked, appended to and replaced by
//!   a rename at the end, none of which a device or a FIFO survives.
//! - No file a run writes (OUT and the reports) may be a file it reads (the manifest, the job
//!   file, the key file), or OUT itself. Files are compared by device and inode after links
//!   are followed, so a symlink or a hard link is caught as surely as the same name.
//!
//! What is not checked here (a missing manifest, a folder that does not exist) is left to
//! the code that opens the file, whose messages already say it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The files of one run, by role.
#[derive(Debug)]
pub struct RunFiles<'a> {
    pub manifest: &'a Path,
    pub job: Option<&'a Path>,
    pub api_key_file: Option<&'a Path>,
    pub output: &'a Path,
    pub summary_json: Option<&'a Path>,
    pub metrics_textfile: Option<&'a Path>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(
        "manifest {path} is {kind}, not a regular file; dashbatch reads the manifest more than \
         once (to count its rows, to run them, to write the results in its order), so write \
         it to a file first (e.g. `... > manifest.csv`) and pass that file"
    )]
    ManifestNotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "results file {path} (-o) is {kind}, not a regular file; the results file is locked, \
         appended to and replaced when the run ends, so pass -o a regular file or a path that \
         does not exist yet"
    )]
    OutputNotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{written} {path} is the same file as the {read} {other}; the run would overwrite it. \
         Pass {flag} a path of its own{hint}"
    )]
    SameFile {
        written: &'static str,
        flag: &'static str,
        path: PathBuf,
        read: &'static str,
        other: PathBuf,
        hint: String,
    },
}

impl FileError {
    /// The report flag whose path the error is about, if any: that report must not be
    /// written, since it would overwrite the file it collides with.
    pub fn report_flag(&self) -> Option<&'static str> {
        match self {
            FileError::SameFile { flag, .. } if flag.starts_with("--") => Some(flag),
            _ => None,
        }
    }
}

/// Checks the files of a run (see the module header).
pub fn check(files: &RunFiles<'_>) -> Result<(), FileError> {
    check_manifest(files.manifest)?;
    if let Some(kind) = special_kind(files.output) {
        return Err(FileError::OutputNotRegular {
            path: files.output.to_owned(),
            kind,
        });
    }
    let read = [
        ("manifest", Some(files.manifest)),
        ("job file", files.job),
        ("API key file", files.api_key_file),
    ];
    let written = [
        ("results file", "-o", Some(files.output)),
        ("summary file", "--summary-json", files.summary_json),
        ("metrics file", "--metrics-textfile", files.metrics_textfile),
    ];
    let hint = |flag: &str| match flag {
        "-o" => format!(
            " (the default is {} beside the manifest)",
            crate::config::default_output(
                files.manifest,
                Some(crate::output::results::Format::of(files.output))
            )
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
        ),
        _ => String::new(),
    };
    for (written_name, flag, path) in written {
        let Some(path) = path else { continue };
        let Some(id) = identity(path) else { continue };
        // A report must not replace the results either.
        let also_output = (flag != "-o").then_some(("results file", Some(files.output)));
        for (read_name, other) in read.into_iter().chain(also_output) {
            if let Some(other) = other
                && identity(other) == Some(id)
            {
                return Err(FileError::SameFile {
                    written: written_name,
                    flag,
                    path: path.to_owned(),
                    read: read_name,
                    other: other.to_owned(),
                    hint: hint(flag),
                });
            }
        }
    }
    Ok(())
}

/// The manifest must be a regular file, when it exists at all.
pub fn check_manifest(path: &Path) -> Result<(), FileError> {
    match special_kind(path) {
        // A folder already gets its own message from the manifest reader.
        Some(kind) if kind != FOLDER => Err(FileError::ManifestNotRegular {
            path: path.to_owned(),
            kind,
        }),
        _ => Ok(()),
    }
}

const FOLDER: &str = "a folder";

/// What `path` is, after links, when it exists and is not a regular file.
fn special_kind(path: &Path) -> Option<&'static str> {
    let kind = std::fs::metadata(path).ok()?.file_type();
    Some(if kind.is_file() {
        return None;
    } else if kind.is_dir() {
        FOLDER
    } else if kind.is_fifo() {
        "a pipe (FIFO)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    })
}

/// Device and inode, after links; `None` for a path that does not exist (yet).
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files<'a>(manifest: &'a Path, output: &'a Path) -> RunFiles<'a> {
        RunFiles {
            manifest,
            job: None,
            api_key_file: None,
            output,
            summary_json: None,
            metrics_textfile: None,
        }
    }

    #[test]
    fn an_output_that_is_the_manifest_by_any_name_is_refused_without_suggesting_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.csv");
        std::fs::write(&manifest, "model,file,prompt\n").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink("m.csv", &link).unwrap();
        let hard = dir.path().join("hard.csv");
        std::fs::hard_link(&manifest, &hard).unwrap();
        for out in [&manifest, &link, &hard] {
            let msg = check(&files(&manifest, out)).unwrap_err().to_string();
            assert!(msg.contains("same file as the manifest"), "{msg}");
            assert!(
                msg.contains("m.results.csv") && !msg.contains("fresh"),
                "{msg}"
            );
        }
        check(&files(&manifest, &dir.path().join("new.csv"))).unwrap();
    }

    #[test]
    fn a_report_over_the_results_or_the_job_file_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.csv");
        let output = dir.path().join("out.csv");
        let job = dir.path().join("job.toml");
        for f in [&manifest, &output, &job] {
            std::fs::write(f, "x\n").unwrap();
        }
        let err = check(&RunFiles {
            summary_json: Some(&output),
            ..files(&manifest, &output)
        })
        .unwrap_err();
        assert_eq!(err.report_flag(), Some("--summary-json"));
        let err = check(&RunFiles {
            job: Some(&job),
            metrics_textfile: Some(&job),
            ..files(&manifest, &output)
        })
        .unwrap_err();
        assert_eq!(err.report_flag(), Some("--metrics-textfile"));
        assert!(err.to_string().contains("job file"), "{err}");
    }
}
