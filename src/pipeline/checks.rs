//! The checks of a row that need no request, in one place for `run` (the worker, before
//! its upload) and `dashbatch validate`, so that both judge a row alike and word it alike:
//! the local file (it exists, is a regular file, can be read, is under a size limit), the
//! media kind, and repeated ids. A check returns the row's [`Failure`]; `validate` prints
//! its message, `run` writes it to the row's line.
//!
//! Deliberately not here: checks of the manifest as a CSV (the manifest module's `bad_row`
//! and `bad_encoding`), and the checks of the opened handle when the file is read for its
//! upload (the uploads module), which guard against a file that changes after these ran.

use std::collections::HashSet;
use std::fs::{FileType, Metadata};
use std::path::Path;

use super::failure::Failure;
use crate::dashscope::{Media, MediaKind};
use crate::failure::{FailureCode, too_large_message};
use crate::manifest::{BadRow, Entry, Source};

/// Checks a local file before anything is sent, so the message can say what to fix.
/// Returns the metadata, so that the hash cache can use its size and mtime without a second
/// stat. Comes before the media kind: a folder named `media` is a folder, whatever its
/// name says.
pub fn local_file(path: &Path) -> Result<Metadata, Failure> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(not_a_file(path, describe(meta.file_type()))),
        Ok(meta) => Ok(meta),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(Failure::local(
            FailureCode::FileNotFound,
            format!("{shown} does not exist; paths are relative to the manifest's folder"),
        )),
        Err(err) => Err(unreadable(path, &err)),
    }
}

/// `not_a_file`: `what` says what the path names instead ([`describe`]).
pub fn not_a_file(path: &Path, what: &str) -> Failure {
    Failure::local(
        FailureCode::NotAFile,
        format!(
            "{} is {what}; the file column must name a regular file",
            path.display()
        ),
    )
}

/// `unreadable_file`, for an error met while opening or reading `path`.
pub fn unreadable(path: &Path, err: &std::io::Error) -> Failure {
    Failure::local(
        FailureCode::UnreadableFile,
        format!("cannot read {}: {err}", path.display()),
    )
}

/// What a path names, when it is not a regular file.
pub fn describe(kind: FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a folder"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// `file_too_large` when `size` is over `limit_mb`; `limit` says whose limit it is.
pub fn size(path: &Path, size: u64, limit_mb: u64, limit: &str) -> Result<(), Failure> {
    if size <= limit_mb.saturating_mul(1024 * 1024) {
        return Ok(());
    }
    Err(Failure::local(
        FailureCode::FileTooLarge,
        too_large_message(path.display(), size, limit_mb, limit),
    ))
}

/// The media kind of a row, from the extension of its file, or of its URL's path (the
/// client's [`MediaKind::from_url`] leaves the query and fragment out).
pub fn media_kind(source: &Source, file: &str) -> Result<MediaKind, Failure> {
    match source {
        Source::Local(path) => MediaKind::from_path(path),
        Source::Oss(url) | Source::Http(url) => MediaKind::from_url(url),
    }
    .ok_or_else(|| unsupported(file))
}

/// The media a URL the row gave stands for, used as is.
pub fn url_media(url: &str, file: &str) -> Result<Media, Failure> {
    Media::for_url(url).ok_or_else(|| unsupported(file))
}

fn unsupported(file: &str) -> Failure {
    Failure::local(
        FailureCode::UnsupportedMedia,
        format!(
            "cannot tell the media kind of {file:?} from its extension; use an image (.png, \
             .jpg, ...), video (.mp4, ...) or audio (.mp3, .wav, ...) file"
        ),
    )
}

/// Tells the second and later rows of a repeated id from the first. Only ids known to repeat
/// (from [`crate::manifest::scan_ids`], which keeps memory flat at any manifest size) are
/// remembered, so this costs nothing per ordinary row.
pub struct Repeats<'a> {
    duplicates: &'a HashSet<u64>,
    /// The line of each repeated id's first row, named in the repeats' messages (a user
    /// knows their lines, not a derived id's hash).
    seen: std::collections::HashMap<u64, u64>,
}

impl<'a> Repeats<'a> {
    pub fn new(duplicates: &'a HashSet<u64>) -> Self {
        Self {
            duplicates,
            seen: std::collections::HashMap::new(),
        }
    }

    /// The line of the earlier row with this id, if `entry` repeats one.
    pub fn seen_before(&mut self, key: u64, entry: &Entry) -> Option<u64> {
        if !self.duplicates.contains(&key) {
            return None;
        }
        match self.seen.entry(key) {
            std::collections::hash_map::Entry::Occupied(first) => Some(*first.get()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(entry.line());
                None
            }
        }
    }
}

/// The error row for a second (or later) row with an id already used.
/// `earlier` is the line of the first row with that id.
pub fn duplicate(entry: Entry, manifest: &Path, earlier: u64) -> BadRow {
    let at = format!("{}, line {}", manifest.display(), entry.line());
    let id = entry.id();
    let message = match &entry {
        // The same model, file, prompt and system: the same work, written twice.
        Entry::Row(row) if row.has_derived_id() => format!(
            "{at}: this row repeats line {earlier} (same model, files, prompt, system and \
             params) and is not run twice; delete the repeat, or add an id column and give \
             each copy its own id to run it again"
        ),
        _ => format!(
            "{at}: id {id:?} is already used by line {earlier}; ids must be unique (give this \
             row its own id, or leave the id empty to let dashbatch derive one)"
        ),
    };
    match entry {
        Entry::Bad(mut bad) => {
            bad.code = FailureCode::DuplicateId;
            bad.message = message;
            bad
        }
        Entry::Row(row) => row.into_bad(FailureCode::DuplicateId, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use std::path::PathBuf;

    fn second_of(text: &str) -> BadRow {
        let manifest = Manifest::from_reader(
            std::io::Cursor::new(text),
            Path::new("m.csv"),
            PathBuf::new(),
        )
        .unwrap();
        let second = manifest.into_iter().nth(1).unwrap();
        duplicate(second, Path::new("m.csv"), 2)
    }

    /// A repeat is told the line of the first row with its id (issue 12), not the second's.
    #[test]
    fn repeats_know_the_line_of_the_first_row() {
        let text = "model,file,prompt\nm,a.png,p\nm,b.png,q\nm,a.png,p\nm,a.png,p\n";
        let manifest = Manifest::from_reader(
            std::io::Cursor::new(text),
            Path::new("m.csv"),
            PathBuf::new(),
        )
        .unwrap();
        let entries: Vec<Entry> = manifest.into_iter().collect();
        let duplicates: HashSet<u64> = [crate::manifest::id_key(entries[0].id())].into();
        let mut repeats = Repeats::new(&duplicates);
        let lines: Vec<Option<u64>> = entries
            .iter()
            .map(|e| repeats.seen_before(crate::manifest::id_key(e.id()), e))
            .collect();
        assert_eq!(lines, [None, None, Some(2), Some(2)]);
    }

    #[test]
    fn a_repeated_row_and_a_reused_id_get_their_own_advice() {
        let repeat = second_of("model,file,prompt\nm,a.png,p\nm,a.png,p\n");
        assert_eq!(repeat.code, FailureCode::DuplicateId);
        assert!(
            repeat
                .message
                .starts_with("m.csv, line 3: this row repeats line 2")
        );
        assert!(repeat.message.contains("add an id column"));
        // The earlier line, not the derived id's hash the user never wrote (issue 12).
        assert!(
            repeat.message.contains("repeats line 2"),
            "{}",
            repeat.message
        );
        assert!(
            !repeat.message.contains(repeat.id.as_str()),
            "{}",
            repeat.message
        );

        let reused = second_of("id,model,file,prompt\nx,m,a.png,p\nx,m,b.png,q\n");
        assert!(
            reused
                .message
                .contains("id \"x\" is already used by line 2"),
            "{}",
            reused.message
        );
    }

    #[test]
    fn a_folder_is_a_folder_whatever_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("media.png");
        std::fs::create_dir(&folder).unwrap();
        let err = local_file(&folder).unwrap_err();
        assert_eq!(err.code, FailureCode::NotAFile);
        assert!(err.message.contains("is a folder"), "{}", err.message);
        let err = local_file(&dir.path().join("gone.png")).unwrap_err();
        assert_eq!(err.code, FailureCode::FileNotFound);
    }

    #[test]
    fn the_kind_of_a_url_ignores_its_query_and_fragment() {
        let url = |u: &str| Source::Http(u.to_owned());
        let kind = media_kind(&url("https://e.com/v/c.mp4?sig=x.txt#t=1"), "f").unwrap();
        assert_eq!(kind, MediaKind::Video);
        let err = media_kind(&url("https://e.com/page?x=a.png"), "f").unwrap_err();
        assert_eq!(err.code, FailureCode::UnsupportedMedia);
        let audio = url_media("https://e.com/a.MP3?x", "f").unwrap();
        assert_eq!(audio.format.as_deref(), Some("mp3"));
    }
}
