//! The OSS POST policy document: parsing it and checking a form against its conditions.
//!
//! A policy is base64 of `{"expiration": "...", "conditions": [...]}`. Conditions are a
//! one-key map (exact match), `["eq", "$f", v]`, `["starts-with", "$f", prefix]`,
//! `["content-length-range", min, max]`, `["in", "$f", [..]]` and `["not-in", "$f", [..]]`.
//! A failing condition is echoed in the error exactly as OSS prints it, JSON with `", "`
//! between items: `["starts-with", "$key", "dir/"]`.
//!
//! The length range is not a form check: the caller compares it with the streamed size.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The form's text fields, names lower-cased (OSS matches names case-insensitively).
pub type Form = HashMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy document: {0}")]
pub struct InvalidPolicy(pub &'static str);

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    pub expiration: DateTime<Utc>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub rule: Rule,
    /// The condition as OSS echoes it in an error message.
    pub echo: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Equals { field: String, value: String },
    StartsWith { field: String, prefix: String },
    In { field: String, values: Vec<String> },
    NotIn { field: String, values: Vec<String> },
    LengthRange { min: u64, max: u64 },
}

impl PolicyDocument {
    pub fn decode(policy_b64: &str) -> Result<Self, InvalidPolicy> {
        let bytes = STANDARD
            .decode(policy_b64.trim())
            .map_err(|_| InvalidPolicy("not base64"))?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|_| InvalidPolicy("not JSON"))?;
        let expiration = doc
            .get("expiration")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .ok_or(InvalidPolicy("expiration missing or not ISO-8601"))?
            .to_utc();
        let conditions = doc
            .get("conditions")
            .and_then(Value::as_array)
            .ok_or(InvalidPolicy("conditions missing"))?
            .iter()
            .map(Condition::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            expiration,
            conditions,
        })
    }

    /// The content-length range, if the policy has one (the last one wins).
    pub fn length_range(&self) -> Option<(u64, u64)> {
        self.conditions.iter().rev().find_map(|c| match c.rule {
            Rule::LengthRange { min, max } => Some((min, max)),
            _ => None,
        })
    }
}

fn field_name(raw: &Value) -> Result<String, InvalidPolicy> {
    let name = raw
        .as_str()
        .ok_or(InvalidPolicy("field name not a string"))?;
    Ok(name.strip_prefix('$').unwrap_or(name).to_ascii_lowercase())
}

fn text(raw: &Value) -> Result<String, InvalidPolicy> {
    match raw {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(InvalidPolicy("condition value not a scalar")),
    }
}

fn number(raw: &Value) -> Result<u64, InvalidPolicy> {
    raw.as_u64()
        .or_else(|| raw.as_str().and_then(|s| s.parse().ok()))
        .ok_or(InvalidPolicy("length bound not a number"))
}

impl Condition {
    fn parse(raw: &Value) -> Result<Self, InvalidPolicy> {
        let rule = match raw {
            Value::Object(map) if map.len() == 1 => {
                let (field, value) = map.iter().next().ok_or(InvalidPolicy("empty condition"))?;
                Rule::Equals {
                    field: field
                        .strip_prefix('$')
                        .unwrap_or(field)
                        .to_ascii_lowercase(),
                    value: text(value)?,
                }
            }
            Value::Array(items) if items.len() == 3 => {
                let op = items[0]
                    .as_str()
                    .ok_or(InvalidPolicy("operator not a string"))?;
                match op.to_ascii_lowercase().as_str() {
                    "eq" => Rule::Equals {
                        field: field_name(&items[1])?,
                        value: text(&items[2])?,
                    },
                    "starts-with" => Rule::StartsWith {
                        field: field_name(&items[1])?,
                        prefix: text(&items[2])?,
                    },
                    "content-length-range" => Rule::LengthRange {
                        min: number(&items[1])?,
                        max: number(&items[2])?,
                    },
                    "in" | "not-in" => {
                        let values = items[2]
                            .as_array()
                            .ok_or(InvalidPolicy("in/not-in needs a list"))?
                            .iter()
                            .map(text)
                            .collect::<Result<_, _>>()?;
                        let field = field_name(&items[1])?;
                        if op.eq_ignore_ascii_case("in") {
                            Rule::In { field, values }
                        } else {
                            Rule::NotIn { field, values }
                        }
                    }
                    _ => return Err(InvalidPolicy("unknown condition operator")),
                }
            }
            _ => return Err(InvalidPolicy("condition is neither a map nor a triple")),
        };
        Ok(Self {
            rule,
            echo: echo(raw),
        })
    }

    /// Whether the form satisfies this condition. `bucket` is the bucket the POST went to,
    /// which a policy may pin like any form field.
    pub fn holds(&self, form: &Form, bucket: &str) -> bool {
        let lookup = |field: &str| -> Option<&str> {
            if field == "bucket" {
                Some(bucket)
            } else {
                form.get(field).map(String::as_str)
            }
        };
        match &self.rule {
            Rule::Equals { field, value } => lookup(field) == Some(value.as_str()),
            Rule::StartsWith { field, prefix } => {
                lookup(field).is_some_and(|v| v.starts_with(prefix.as_str()))
            }
            Rule::In { field, values } => {
                lookup(field).is_some_and(|v| values.iter().any(|x| x == v))
            }
            Rule::NotIn { field, values } => {
                lookup(field).is_none_or(|v| values.iter().all(|x| x != v))
            }
            Rule::LengthRange { .. } => true,
        }
    }
}

/// JSON with Python's default separators, the way OSS echoes a condition.
fn echo(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(echo).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), echo(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        scalar => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(conditions: Value) -> PolicyDocument {
        let raw = json!({"expiration": "2030-01-01T00:00:00.000Z", "conditions": conditions});
        PolicyDocument::decode(&STANDARD.encode(raw.to_string())).expect("valid policy")
    }

    fn form(pairs: &[(&str, &str)]) -> Form {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn echo_matches_oss() {
        let d = doc(
            json!([["starts-with", "$key", "dir/"], {"bucket": "b"}, ["content-length-range", 0, 10]]),
        );
        assert_eq!(d.conditions[0].echo, r#"["starts-with", "$key", "dir/"]"#);
        assert_eq!(d.conditions[1].echo, r#"{"bucket": "b"}"#);
        assert_eq!(d.conditions[2].echo, r#"["content-length-range", 0, 10]"#);
        assert_eq!(d.length_range(), Some((0, 10)));
    }

    #[test]
    fn each_rule() {
        let d = doc(json!([
            {"x-oss-object-acl": "private"},
            ["eq", "$Key", "a/b"],
            ["starts-with", "$key", "a/"],
            ["in", "$success_action_status", ["200", "204"]],
            ["not-in", "$x-oss-content-type", ["text/html"]],
            {"bucket": "bkt"}
        ]));
        let good = form(&[
            ("x-oss-object-acl", "private"),
            ("key", "a/b"),
            ("success_action_status", "200"),
        ]);
        assert!(d.conditions.iter().all(|c| c.holds(&good, "bkt")));
        let bad = form(&[
            ("x-oss-object-acl", "public-read"),
            ("key", "b/b"),
            ("success_action_status", "201"),
            ("x-oss-content-type", "text/html"),
        ]);
        assert!(d.conditions.iter().all(|c| !c.holds(&bad, "other")));
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(PolicyDocument::decode("%%%").is_err());
        assert!(PolicyDocument::decode(&STANDARD.encode("{}")).is_err());
        assert!(
            PolicyDocument::decode(
                &STANDARD
                    .encode(r#"{"expiration":"2030-01-01T00:00:00Z","conditions":[["nope",1,2]]}"#)
            )
            .is_err()
        );
    }
}
