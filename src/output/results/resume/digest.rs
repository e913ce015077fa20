//! What a row asks, as one 64-bit digest: the `input_digest` column of a results line, and
//! what resume compares before it takes a line as the row's answer.
//!
//! The digest covers the model, the media cells as written, the prompt, the system prompt,
//! the row's `params` cell (not the run's `--param`s, as it does not cover `--api`), and for
//! each local file its size and modification time in nanoseconds: a file
//! rewritten at the same path is a new question, found with one `stat` per row rather than
//! by hashing every file on resume (the quick check `make` and `rsync` use). A rewrite that
//! keeps both the size and the modification time (`cp -p`, `touch -r`) is not seen; nor is
//! new content behind an unchanged URL.
//!
//! Lines written before the column existed have no digest. Their [`InputDigest::legacy`]
//! covers what such a line records, model, file and prompt, so they still resume, and a
//! changed prompt still runs again.

use std::fmt;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::manifest::{Row, Source};

/// A digest of what a row asks (see the module docs). Shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InputDigest(pub u64);

impl InputDigest {
    /// The digest of `row` as it stands now: one `stat` of each local file. The first media
    /// item keeps the place it had when a row held one file, so a one-file row's digest is
    /// the one earlier versions wrote; further items follow.
    pub fn of(row: &Row) -> Self {
        let stamps: Vec<String> = row.media.iter().map(|m| stamp(&m.source)).collect();
        let mut parts = vec![
            "v2",
            &row.model,
            row.file(),
            &row.prompt,
            row.system.as_deref().unwrap_or(""),
            stamps.first().map_or("", String::as_str),
        ];
        for (media, stamp) in row.media.iter().zip(&stamps).skip(1) {
            parts.extend([media.file.as_str(), stamp.as_str()]);
        }
        // The row's own parameters (its `params` cell), after a mark; a row without them keeps
        // the digest earlier versions wrote.
        let params = row.params.as_ref().map(crate::manifest::canonical_params);
        if let Some(params) = &params {
            parts.extend(["\u{1e}params", params.as_str()]);
        }
        Self::hash(&parts)
    }

    /// The digest of a line without an `input_digest`: what it records of the row.
    pub fn legacy(model: &str, file: &str, prompt: &str) -> Self {
        Self::hash(&["v1", model, file, prompt])
    }

    /// Reads the column back. `None` for anything that is not 16 hex digits (a hand edit): such
    /// a line then matches no row, and its row runs again.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Self)
    }

    fn hash(parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        // The unit separator keeps ("ab", "c") and ("a", "bc") apart.
        for part in parts {
            hasher.update(part.as_bytes());
            hasher.update([0x1f]);
        }
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_be_bytes(first))
    }
}

/// What the digest knows of a media item beyond its cell: for a local file, one `stat`.
fn stamp(source: &Source) -> String {
    match source {
        Source::Local(path) => match std::fs::metadata(path) {
            Ok(meta) => {
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("local size={} mtime_ns={mtime}", meta.len())
            }
            // The row fails on its missing file; no ok line can match this.
            Err(_) => "local missing".to_owned(),
        },
        Source::Oss(_) | Source::Http(_) => "url".to_owned(),
    }
}

impl fmt::Display for InputDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What the lines of a results file say about one row: its digest, or for a line from before
/// the column, the legacy one of its model, file and prompt columns. A digest that does not
/// parse gives a value no row has (as near as 64 bits can tell).
pub fn line_digest(digest: Option<&[u8]>, model: &[u8], file: &[u8], prompt: &[u8]) -> u64 {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match digest {
        Some(d) if !d.is_empty() => {
            std::str::from_utf8(d)
                .ok()
                .and_then(InputDigest::parse)
                .unwrap_or(InputDigest::hash(&["unreadable", &text(d)]))
                .0
        }
        _ => InputDigest::legacy(&text(model), &text(file), &text(prompt)).0,
    }
}

/// The digests a line of `row` may carry to count as its answer: the digest now, or the
/// legacy one for a line from before the column.
pub fn row_digests(row: &Row) -> [u64; 2] {
    [
        InputDigest::of(row).0,
        InputDigest::legacy(&row.model, row.file(), &row.prompt).0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MediaRef;
    use std::path::PathBuf;

    fn row(file: PathBuf, prompt: &str) -> Row {
        Row {
            line: 2,
            id: "1".into(),
            model: "m".into(),
            media: vec![MediaRef {
                file: "a.png".into(),
                source: Source::Local(file),
            }],
            prompt: prompt.into(),
            system: None,
            params: None,
            extra: vec![],
            input_digest: None,
        }
    }

    #[test]
    fn a_changed_prompt_system_or_file_changes_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        std::fs::write(&path, b"one").unwrap();
        let base = row(path.clone(), "p");
        let d = InputDigest::of(&base);
        assert_eq!(d, InputDigest::of(&base), "stable");
        assert_ne!(d, InputDigest::of(&row(path.clone(), "q")));
        let mut with_system = base.clone();
        with_system.system = Some("s".into());
        assert_ne!(d, InputDigest::of(&with_system));
        // Same size, another modification time.
        std::fs::write(&path, b"two").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_nanos(1_234_567_891))
            .unwrap();
        assert_ne!(d, InputDigest::of(&base));
    }

    /// Resume compares a row's digest with the one its earlier line carries: a one-file row
    /// must keep the digest that earlier versions wrote, byte for byte. The values were
    /// computed by the version before rows held a list of media.
    #[test]
    fn the_digest_of_a_one_file_row_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cat.png");
        std::fs::write(&path, b"cat").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_nanos(1_234_567_891))
            .unwrap();
        let mut local = row(path, "What is this?");
        local.model = "qwen-vl-plus".into();
        local.media[0].file = "img/cat.png".into();
        assert_eq!(InputDigest::of(&local).to_string(), "13612c316ac55aa2");
        let url = "https://example.com/a.png";
        let mut remote = local.clone();
        remote.media[0] = MediaRef {
            file: url.into(),
            source: Source::Http(url.into()),
        };
        remote.system = Some("Be brief.".into());
        assert_eq!(InputDigest::of(&remote).to_string(), "3738aba0d076eb0b");
    }

    #[test]
    fn the_column_reads_back_and_a_legacy_line_matches_by_its_fields() {
        let d = InputDigest(0x0123_4567_89ab_cdef);
        assert_eq!(d.to_string(), "0123456789abcdef");
        assert_eq!(InputDigest::parse(&d.to_string()), Some(d));
        assert_eq!(InputDigest::parse("xyz"), None);
        assert_eq!(line_digest(Some(b"0123456789abcdef"), b"", b"", b""), d.0);
        let legacy = line_digest(None, b"m", b"a.png", b"p");
        assert_eq!(legacy, row_digests(&row("a.png".into(), "p"))[1]);
        assert_eq!(line_digest(Some(b""), b"m", b"a.png", b"p"), legacy);
        assert_ne!(line_digest(Some(b"edited"), b"m", b"a.png", b"p"), legacy);
    }
}
