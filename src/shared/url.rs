//! `--redis URL`: checked when it is read, and shown everywhere with its password masked.

use std::fmt;

/// A Redis URL. Its `Debug` and `Display` mask the password (`redis://:***@host/0`), so the
/// settings' Debug output, every message and every log line can name it safely; only
/// [`RedisUrl::secret`] gives the whole URL, to the connection itself.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct RedisUrl {
    full: String,
    shown: String,
}

/// The schemes the redis crate connects to: TCP, TCP with TLS, a unix socket.
const SCHEMES: [&str; 3] = ["redis", "rediss", "redis+unix"];

impl RedisUrl {
    /// Parses and checks `text`; the error never repeats the password.
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let text = text.trim();
        let mut url = reqwest::Url::parse(text).map_err(|e| {
            format!(
                "{} is not a Redis URL ({e}); write redis://HOST:PORT/DB, rediss://… or \
                 redis+unix:///PATH",
                mask_unparsed(text)
            )
        })?;
        if url.password().is_some() {
            // Cannot fail: a URL with a password has a host to hang it on.
            let _ = url.set_password(Some("***"));
        }
        let shown = url.to_string();
        if !SCHEMES.contains(&url.scheme()) {
            return Err(format!(
                "{shown} is not a Redis URL: use the scheme redis://, rediss:// or redis+unix://"
            ));
        }
        if url.scheme() == "redis+unix" && url.path().trim_matches('/').is_empty() {
            return Err(format!(
                "{shown} names no socket: write redis+unix:///path/to/redis.sock"
            ));
        }
        if url.scheme() != "redis+unix" && url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{shown} names no host: write redis://HOST:PORT/DB"));
        }
        Ok(RedisUrl {
            full: text.to_owned(),
            shown,
        })
    }

    /// The whole URL, password included: for the connection only.
    pub(super) fn secret(&self) -> &str {
        &self.full
    }
}

/// A text that did not parse as a URL, with everything before its last `@` masked (after
/// any `//`): where a password would be.
fn mask_unparsed(text: &str) -> String {
    let Some(at) = text.rfind('@') else {
        return text.to_owned();
    };
    let start = text[..at].find("//").map_or(0, |s| s + 2);
    format!("{}***{}", &text[..start], &text[at..])
}

impl TryFrom<String> for RedisUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        RedisUrl::parse(&text)
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_schemes_are_taken_and_others_refused() {
        for ok in [
            "redis://localhost:6379/0",
            "rediss://user:pw@cache.example:6380/2",
            "redis+unix:///run/redis/redis.sock",
        ] {
            RedisUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["http://h:1/", "redis+unix://", "localhost:6379", "redis://"] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_password_is_never_shown() {
        let url = RedisUrl::parse("redis://:hunter2@h:6379/0").unwrap();
        assert_eq!(url.to_string(), "redis://:***@h:6379/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.secret(), "redis://:hunter2@h:6379/0");
        for bad in [
            "ftp://u:hunter2@h/",
            "redis://u:hunter2@",
            "not a url u:hunter2@h",
        ] {
            let err = RedisUrl::parse(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{bad}: {err}");
        }
    }
}
