//! Job files: a TOML file that names the manifest, the output and any settings, so a crontab
//! line stays short and the settings live under version control. Paths in a job file are
//! relative to the job file's folder. Flags given on the command line override it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every key a job file may set; each mirrors the `run` flag of the same name.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub manifest: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub api: Option<String>,
    pub base_url: Option<String>,
    pub emulator: Option<bool>,
    pub concurrency: Option<u32>,
    pub upload_concurrency: Option<u32>,
    pub max_attempts: Option<u32>,
    pub credential_qps: Option<u32>,
    pub model_rps: Option<f64>,
    pub request_timeout_s: Option<u64>,
    pub upload_timeout_s: Option<u32>,
    pub upload_stall_timeout_s: Option<u32>,
    /// Seconds, as `--drain-timeout`.
    pub drain_timeout: Option<u64>,
    /// Seconds, as `--outage-timeout`.
    pub outage_timeout: Option<u64>,
    pub state_dir: Option<PathBuf>,
    pub summary_json: Option<PathBuf>,
    pub metrics_textfile: Option<PathBuf>,
    pub api_key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read job file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// True when `path` names a job file rather than a manifest.
pub fn is_job_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

impl JobFile {
    /// Reads a job file and resolves its paths against the job file's folder.
    pub fn load(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|source| JobError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut job: JobFile = toml::from_str(&text).map_err(|e| JobError::Parse {
            path: path.to_owned(),
            // toml's message names the line and column and, for a typo, the keys it expected.
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut job.manifest,
            &mut job.output,
            &mut job.state_dir,
            &mut job.summary_json,
            &mut job.metrics_textfile,
            &mut job.api_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
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
