//! The one merge of `run`'s settings: a flag's value, else the job file's, else the default.
//! A job file's value is checked here as its flag was checked by clap, and refused naming the
//! job file, the key and what to use instead. What each setting is (its default, its range)
//! is declared in [`super::settings`].

use std::path::PathBuf;

use super::settings::{MAX_MODEL_RPS, Settings, rps_in_range};

/// The settings of the command line over those of the job file, if any.
#[derive(Debug, Default)]
pub struct Layers {
    pub flags: Settings,
    pub job: Settings,
    /// The job file the second layer came from, named in its errors.
    pub job_path: Option<PathBuf>,
}

impl Layers {
    /// The one merge: the flag's value, else the job file's (which `check` must accept:
    /// clap has checked only the flag), else `default`.
    pub fn merge<T>(
        &self,
        field: impl Fn(&Settings) -> Option<T>,
        default: Option<T>,
        key: &'static str,
        check: impl Fn(&T) -> Result<(), String>,
    ) -> Result<Option<T>, SettingError>
    where
        T: std::fmt::Display,
    {
        if let Some(flag) = field(&self.flags) {
            return Ok(Some(flag));
        }
        match field(&self.job) {
            Some(value) => match check(&value) {
                Ok(()) => Ok(Some(value)),
                Err(hint) => Err(SettingError {
                    job: self.job_path.clone().unwrap_or_default(),
                    key,
                    value: value.to_string(),
                    hint,
                }),
            },
            None => Ok(default),
        }
    }

    /// A setting without a default or a range: the flag's value, else the job file's.
    pub fn given<T>(&self, field: impl Fn(&Settings) -> Option<T>) -> Option<T> {
        field(&self.flags).or_else(|| field(&self.job))
    }

    /// The run's generation parameters: the job file's `[params]`, then each `--param` over
    /// them key by key (a later flag over an earlier one).
    pub fn params(&self) -> serde_json::Map<String, serde_json::Value> {
        self.job
            .params
            .iter()
            .chain(&self.flags.params)
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    }

    /// `--model-tpm`, else the job file's `model_tpm`, checked as the flag is.
    pub fn model_tpm(&self) -> Result<Option<u64>, SettingError> {
        use super::settings::MAX_MODEL_TPM;
        self.merge(
            |s| s.model_tpm,
            None,
            "model_tpm",
            |&tpm| {
                if (1..=MAX_MODEL_TPM).contains(&tpm) {
                    Ok(())
                } else {
                    Err(format!(
                        "use a number of tokens per minute from 1 to {MAX_MODEL_TPM}"
                    ))
                }
            },
        )
    }

    /// `--model-rps`, else the job file's `model_rps`, checked as the flag is.
    pub fn model_rps(&self) -> Result<Option<f64>, SettingError> {
        self.merge(
            |s| s.model_rps,
            None,
            "model_rps",
            |&rps| {
                if rps_in_range(rps) {
                    Ok(())
                } else {
                    Err(format!(
                        "use a number of calls per second above 0, at most {MAX_MODEL_RPS}"
                    ))
                }
            },
        )
    }
}

/// A job file's value that its flag would not accept.
#[derive(Debug, thiserror::Error)]
#[error("job file {}: {key} = {value} is out of range; {hint}", job.display())]
pub struct SettingError {
    job: PathBuf,
    key: &'static str,
    value: String,
    hint: String,
}
