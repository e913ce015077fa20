//! Job files: a TOML file that names the manifest, the output and any settings, so a crontab
//! line stays short and the settings live under version control. Paths in a job file are
//! relative to the job file's folder. Flags given on the command line override it. Its keys
//! are declared, with the flags, in [`super::settings`].

use std::path::{Component, Path, PathBuf};

use super::settings::Settings;

/// A job file holds the same settings as `run`'s flags, under the same names
/// ([`Settings`]), with the manifest among them.
pub type JobFile = Settings;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    // `error`, not `source`: the message already quotes it, and a source would be printed a
    // second time by `{:#}` ("...: No such file (os error 2): No such file (os error 2)").
    #[error("cannot read job file {path}: {error}", path = path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("job file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// True when `path` names a job file rather than a manifest.
pub fn is_job_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

impl Settings {
    /// Reads a job file and resolves its paths against the job file's folder.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|error| JobError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut job: JobFile = toml::from_str(&text).map_err(|e| JobError::Parse {
            path: path.to_owned(),
            // toml's message names the line and column and, for a typo, the keys it expected.
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in job.paths_mut().into_iter().flatten() {
            if p.is_relative() {
                *p = normalise(&base.join(&*p));
            }
        }
        if let Some(why) = job
            .params
            .iter()
            .find_map(|p| crate::dashscope::check_param_name(&p.name).err())
        {
            return Err(JobError::Parse {
                path: path.to_owned(),
                message: format!("[params]: {why}"),
            });
        }
        if job.manifest.is_none() {
            return Err(JobError::Parse {
                path: path.to_owned(),
                message: "it must name the manifest: manifest = \"path/to/manifest.csv\"".into(),
            });
        }
        Ok(job)
    }
}

/// `path` without `.` components, and with `dir/..` taken out, so that `jobs/../m1.csv`
/// reaches messages and metric labels as `m1.csv`. Lexical, except that a `..` after a
/// symbolic link is kept: the kernel resolves it from the link's target, so taking out the
/// pair would name another file.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) if !is_symlink(&out) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_job_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nightly.toml");
        std::fs::write(
            &path,
            "manifest = \"data/m.csv\"\noutput = \"/abs/out.csv\"\nconcurrency = 64\n",
        )
        .unwrap();
        let job = JobFile::load(&path).unwrap();
        assert_eq!(job.manifest.unwrap(), dir.path().join("data/m.csv"));
        assert_eq!(job.output.unwrap(), PathBuf::from("/abs/out.csv"));
        assert_eq!(job.concurrency, Some(64));
    }

    /// Issue 12: `jobs/../m1.csv` landed as is in messages and in a Prometheus label.
    #[test]
    fn paths_are_normalised_against_the_job_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("jobs")).unwrap();
        let path = dir.path().join("jobs/nightly.toml");
        std::fs::write(
            &path,
            "manifest = \"../m1.csv\"\noutput = \"./out/../r.csv\"\nstate_dir = \"../../s\"\n",
        )
        .unwrap();
        let job = JobFile::load(&path).unwrap();
        assert_eq!(job.manifest.unwrap(), dir.path().join("m1.csv"));
        assert_eq!(job.output.unwrap(), dir.path().join("jobs/r.csv"));
        assert_eq!(
            job.state_dir.unwrap(),
            dir.path().parent().unwrap().join("s")
        );

        for (path, want) in [
            ("jobs/../m1.csv", "m1.csv"),
            ("./a/./b/../c", "a/c"),
            ("../x", "../x"),
            ("a/../..", ".."),
            ("a/..", "."),
            ("/../x", "/x"),
        ] {
            assert_eq!(normalise(Path::new(path)), PathBuf::from(want), "{path}");
        }
    }

    /// A `..` after a symbolic link goes up from the link's target, as the kernel reads it.
    #[cfg(unix)]
    #[test]
    fn a_parent_of_a_symlink_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("real/jobs")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real/jobs"), dir.path().join("link")).unwrap();
        let through = dir.path().join("link/../m.csv");
        assert_eq!(normalise(&through), through);
    }

    #[test]
    fn a_typo_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.toml");
        std::fs::write(&path, "manifest = \"m.csv\"\nconcurrancy = 4\n").unwrap();
        let msg = JobFile::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("j.toml") && msg.contains("concurrancy"),
            "{msg}"
        );
    }

    #[test]
    fn a_job_without_a_manifest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.toml");
        std::fs::write(&path, "concurrency = 4\n").unwrap();
        let msg = JobFile::load(&path).unwrap_err().to_string();
        assert!(msg.contains("must name the manifest"), "{msg}");
    }
}
