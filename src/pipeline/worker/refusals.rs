//! The models the service refused for good in this run (issue 11): an account that may not
//! use a model, a model that does not exist, or a getPolicy that refuses the model name.
//!
//! Every call to such a model would get the same answer, so after the first definitive
//! refusal its remaining rows fail with the service's code and message and no call: at most
//! the calls already in flight (C, the concurrency) reach the service. Other models go on.
//! Deliberately not here: deciding that an answer is such a refusal ([`Failure::refuses_model`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::dashscope::{ApiError, ErrorKind};
use crate::pipeline::failure::Failure;

/// Shared by every worker and every model call's watch. The lock is held for a lookup or an
/// insert, never across an await.
#[derive(Debug, Default)]
pub struct Refusals {
    models: Mutex<HashMap<String, Failure>>,
}

impl Refusals {
    /// Records `failure` as `model`'s refusal, if it is one and the model has none yet.
    pub fn record(&self, model: &str, failure: &Failure) {
        if !failure.refuses_model() {
            return;
        }
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if !models.contains_key(model) {
            tracing::warn!(
                "model {model} refused ({}: {}); its remaining rows fail without a call, \
                 the other models go on",
                failure.code,
                failure.message
            );
            models.insert(model.to_owned(), failure.clone());
        }
    }

    /// The failure of a row of `model` that has not called it, if the model was refused:
    /// the service's code and message, and that no call was made.
    pub fn refused(&self, model: &str) -> Option<Failure> {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let mut failure = models.get(model)?.clone();
        failure.message = format!(
            "{} (the model was refused earlier in this run; not called again)",
            failure.message
        );
        failure.request_id = None;
        Some(failure)
    }

    /// The same, as the error that ends a model call's retry loop before it is sent.
    pub fn refused_call(&self, model: &str) -> Option<ApiError> {
        let f = self.refused(model)?;
        Some(ApiError {
            code: f.code,
            ..ApiError::local(
                ErrorKind::ModelRefused,
                crate::failure::FailureCode::Internal,
                f.message,
            )
        })
    }

    /// Each refused model and why (`code: message` of its first refusal), for the summary.
    pub fn summary(&self) -> BTreeMap<String, String> {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        models
            .iter()
            .map(|(m, f)| (m.clone(), format!("{}: {}", f.code, f.message)))
            .collect()
    }
}
