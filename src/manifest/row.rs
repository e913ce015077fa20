//! One manifest row, parsed: what a worker needs to process it (its model, prompt and list of
//! media), and what a results line needs to name it.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::failure::FailureCode;

/// Where a row's media comes from, decided from the `file` column as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local file, resolved against the manifest's folder. Uploaded before the model call.
    Local(PathBuf),
    /// An `oss://` URL from an earlier upload: given to the model as is.
    Oss(String),
    /// An `http(s)://` URL: given to the model as is, the model downloads it.
    Http(String),
}

/// One media input of a row: a media column's cell as written, and where it points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    /// The cell as written (trimmed), for the results file and messages.
    pub file: String,
    pub source: Source,
}

/// A row that parsed. Its files have not been looked at yet: that is the worker's job, so a
/// missing file fails its own row in the same way as any other per-row problem.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line of the manifest where the record starts (the header is line 1).
    pub line: u64,
    pub id: String,
    pub model: String,
    /// The row's media, never empty: the `file` column, then `file2`, `file3`, … by their
    /// number, empty cells left out.
    pub media: Vec<MediaRef>,
    pub prompt: String,
    pub system: Option<String>,
    /// The `params` cell: generation parameters for this row, merged key by key over the
    /// run's. `None` when the manifest has no such column or the cell is empty.
    pub params: Option<super::Params>,
    /// Values of the pass-through columns, in header order.
    pub extra: Vec<String>,
    /// What the row asks, as the run's reader found it before the row ran (see
    /// [`crate::output::results::resume::InputDigest`]); `None` until then. Written to the row's
    /// results line, so that a later run can tell whether the row has changed.
    pub input_digest: Option<crate::output::results::resume::InputDigest>,
}

impl Row {
    /// The `file` column as written: the first media item, the one the results line names.
    pub fn file(&self) -> &str {
        self.media.first().map_or("", |m| m.file.as_str())
    }

    /// This row as a failed one, for a problem found after it parsed (a repeated id, a run
    /// that stopped before it).
    pub fn into_bad(self, code: FailureCode, message: String) -> BadRow {
        BadRow {
            line: self.line,
            file: self.file().to_owned(),
            id: self.id,
            model: self.model,
            prompt: self.prompt,
            extra: self.extra,
            code,
            message,
        }
    }

    /// Whether the id is the one [`derived_id`] gives this row: the manifest has no `id`
    /// column, or this row's cell is empty. Two rows with the same derived id are the same
    /// work, which calls for other advice than two rows given the same id.
    pub fn has_derived_id(&self) -> bool {
        self.id
            == derived_id_with(
                &self.model,
                self.media.iter().map(|m| m.file.as_str()),
                &self.prompt,
                self.system.as_deref(),
                self.params.as_ref().map(super::canonical_params).as_deref(),
            )
    }
}

/// A row that did not parse. It still becomes a results line: the fields that could be read
/// are carried along so the user can find the row, and `message` names the line.
#[derive(Debug, Clone)]
pub struct BadRow {
    pub line: u64,
    pub id: String,
    pub model: String,
    pub file: String,
    pub prompt: String,
    pub extra: Vec<String>,
    /// A stable machine-readable code for the `error_code` column.
    pub code: FailureCode,
    pub message: String,
}

/// One item of the manifest stream.
#[derive(Debug, Clone)]
pub enum Entry {
    Row(Row),
    Bad(BadRow),
}

impl Entry {
    pub fn line(&self) -> u64 {
        match self {
            Entry::Row(row) => row.line,
            Entry::Bad(bad) => bad.line,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Entry::Row(row) => &row.id,
            Entry::Bad(bad) => &bad.id,
        }
    }
}

/// The id of a row without an `id` column: a hash of what defines the work, so that the same
/// row keeps its id across runs (resume depends on it) and edits to a row give it a new one.
/// `files` are the row's media cells as written, in column order.
pub fn derived_id<'a>(
    model: &str,
    files: impl IntoIterator<Item = &'a str>,
    prompt: &str,
    system: Option<&str>,
) -> String {
    derived_id_with(model, files, prompt, system, None)
}

/// [`derived_id`] of a row that may have a `params` cell (its canonical text). A row without
/// one keeps the id [`derived_id`] gives it; one with parameters gets another id, so that two
/// rows asking the same with other parameters are two rows, not a repeated id.
pub fn derived_id_with<'a>(
    model: &str,
    files: impl IntoIterator<Item = &'a str>,
    prompt: &str,
    system: Option<&str>,
    params: Option<&str>,
) -> String {
    let mut files = files.into_iter();
    // The first file keeps the place it had when a row held one, so a one-file row keeps the
    // id earlier versions gave it (and its results lines still resume); any further files
    // come after the system prompt.
    let first = files.next().unwrap_or("");
    let mut hasher = Sha256::new();
    // The unit separator cannot appear in a CSV field that matters here, and keeps
    // ("ab", "c") and ("a", "bc") apart.
    let mut add = |part: &str| {
        hasher.update(part.as_bytes());
        hasher.update([0x1f]);
    };
    for part in [model, first, prompt, system.unwrap_or("")] {
        add(part);
    }
    files.for_each(&mut add);
    // Marked, so that parameters can never read as one more file.
    if let Some(params) = params {
        add("\u{1e}params");
        add(params);
    }
    let digest = hasher.finalize();
    hex::encode(&digest[..8])
}

/// Decides a row's source from the `file` column: the one parse of it that `run` and
/// `validate` share. A scheme is case-insensitive (RFC 3986, 3.1), and is written in
/// lowercase in the URL given to the model, since services (and the emulator) look for
/// `https://` and `oss://` as spelled; the rest of the URL is kept as written.
pub fn classify_source(file: &str, base_dir: &std::path::Path) -> Source {
    let scheme = |scheme: &str| {
        file.get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .map(|_| format!("{scheme}{}", &file[scheme.len()..]))
    };
    if let Some(url) = scheme("oss://") {
        Source::Oss(url)
    } else if let Some(url) = scheme("http://").or_else(|| scheme("https://")) {
        Source::Http(url)
    } else {
        Source::Local(base_dir.join(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn derived_id_is_stable_and_separates_fields() {
        let a = derived_id("m", ["a.png"], "p", None);
        assert_eq!(a, derived_id("m", ["a.png"], "p", None));
        assert_eq!(a.len(), 16);
        assert_ne!(a, derived_id("m", ["a.pn"], "gp", None));
        assert_ne!(a, derived_id("m", ["a.png"], "p", Some("s")));
        // A second file is part of the work, wherever the first one is.
        let two = derived_id("m", ["a.png", "b.png"], "p", None);
        assert_ne!(a, two);
        assert_ne!(two, derived_id("m", ["b.png", "a.png"], "p", None));
        assert_ne!(two, derived_id("m", ["a.png"], "p", Some("b.png")));
    }

    /// Resume finds a row's earlier line by its id: a one-file row must keep the id that
    /// earlier versions derived, byte for byte. The values were computed by the version
    /// before rows held a list of media.
    #[test]
    fn the_derived_id_of_a_one_file_row_is_unchanged() {
        assert_eq!(
            derived_id("qwen-vl-plus", ["img/cat.png"], "What is this?", None),
            "7c2124e73a70032e"
        );
        assert_eq!(
            derived_id(
                "qwen-vl-plus",
                ["img/cat.png"],
                "What is this?",
                Some("Be brief.")
            ),
            "808c40927a652789"
        );
    }

    #[test]
    fn a_derived_id_is_told_from_a_given_one() {
        let row = |id: &str| Row {
            line: 2,
            id: id.to_owned(),
            model: "m".into(),
            media: vec![MediaRef {
                file: "a.png".into(),
                source: Source::Local("a.png".into()),
            }],
            prompt: "p".into(),
            system: Some("s".into()),
            params: None,
            extra: vec![],
            input_digest: None,
        };
        assert!(row(&derived_id("m", ["a.png"], "p", Some("s"))).has_derived_id());
        assert!(!row(&derived_id("m", ["a.png"], "p", None)).has_derived_id());
        assert!(!row("a1").has_derived_id());
    }

    #[test]
    fn sources_are_classified_by_scheme() {
        let base = Path::new("/jobs");
        assert_eq!(
            classify_source("oss://dashscope-instant/x/a.png", base),
            Source::Oss("oss://dashscope-instant/x/a.png".into())
        );
        assert_eq!(
            classify_source("HTTPS://EXAMPLE.COM/B.PNG", base),
            Source::Http("https://EXAMPLE.COM/B.PNG".into()),
            "the scheme is lowercased, the rest kept"
        );
        assert_eq!(
            classify_source("Oss://d/a.png", base),
            Source::Oss("oss://d/a.png".into())
        );
        assert_eq!(
            classify_source("httpx://a.png", base),
            Source::Local("/jobs/httpx://a.png".into())
        );
        assert_eq!(
            classify_source("img/a.png", base),
            Source::Local("/jobs/img/a.png".into())
        );
    }
}
