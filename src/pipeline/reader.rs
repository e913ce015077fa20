//! The manifest reader thread: streams entries to the workers, skipping rows an earlier run
//! finished (while what they ask is unchanged) and turning repeated ids into per-row errors.
//!
//! It runs on a blocking thread (CSV parsing is synchronous) and hands rows over a bounded
//! channel, so it runs ahead of the workers by at most one channel's worth of rows.

use std::collections::HashSet;

use tokio::sync::mpsc;

use crate::manifest::{BadRow, Entry, Manifest, id_key};
use crate::output::Event;
use crate::output::resume::{Done, InputDigest, Resumed};

/// Tells the second and later rows of a repeated id from the first. Only ids known to repeat
/// are remembered, so this costs nothing per ordinary row.
pub struct Repeats<'a> {
    duplicates: &'a HashSet<u64>,
    seen: HashSet<u64>,
}

impl<'a> Repeats<'a> {
    pub fn new(duplicates: &'a HashSet<u64>) -> Self {
        Self {
            duplicates,
            seen: HashSet::new(),
        }
    }

    pub fn seen_before(&mut self, key: u64) -> bool {
        self.duplicates.contains(&key) && !self.seen.insert(key)
    }
}

/// Reads `manifest` to the end or until the workers stop listening. `done` holds the `ok`
/// lines of earlier runs; `duplicates` the ids a first pass found more than once
/// ([`crate::manifest::scan_ids`]). A row is skipped when a line answers what it asks now;
/// each row sent carries its [`InputDigest`], taken here, before its file is read, so that a
/// file rewritten later gives a digest that no longer matches. Sends the numbers of skipped
/// and changed rows to the reporter at the end.
pub fn read(
    manifest: Manifest,
    done: &Done,
    duplicates: &HashSet<u64>,
    rows: mpsc::Sender<Entry>,
    events: mpsc::Sender<Event>,
) {
    let mut repeats = Repeats::new(duplicates);
    let (mut skipped, mut changed) = (0u64, 0u64);
    let path = manifest.path().to_owned();
    for entry in manifest {
        let key = id_key(entry.id());
        let entry = match entry {
            entry if repeats.seen_before(key) => Entry::Bad(duplicate(entry, &path)),
            Entry::Row(mut row) => {
                let digest = InputDigest::of(&row);
                let legacy = InputDigest::legacy(&row.model, row.file(), &row.prompt);
                match done.check(key, [digest.0, legacy.0]) {
                    Resumed::Done => {
                        skipped += 1;
                        continue;
                    }
                    Resumed::Changed => changed += 1,
                    Resumed::New => {}
                }
                row.input_digest = Some(digest);
                Entry::Row(row)
            }
            bad => bad,
        };
        if rows.blocking_send(entry).is_err() {
            break; // the run stopped; compaction accounts for the rest
        }
    }
    let _ = events.blocking_send(Event::Skipped(skipped));
    let _ = events.blocking_send(Event::Changed(changed));
}

/// The error row for a second (or later) row with an id already used.
pub fn duplicate(entry: Entry, manifest: &std::path::Path) -> BadRow {
    let at = format!("{}, line {}", manifest.display(), entry.line());
    let id = entry.id();
    let message = match &entry {
        // The same model, file, prompt and system: the same work, written twice.
        Entry::Row(row) if row.has_derived_id() => format!(
            "{at}: this row repeats an earlier row (same model, file, prompt and system, so \
             the same derived id {id:?}) and is not run twice; delete the repeat, or add an id \
             column and give each copy its own id to run it again"
        ),
        _ => format!(
            "{at}: id {id:?} is already used by an earlier row; ids must be unique (give this \
             row its own id, or leave the id empty to let dashbatch derive one)"
        ),
    };
    match entry {
        Entry::Bad(mut bad) => {
            bad.code = "duplicate_id";
            bad.message = message;
            bad
        }
        Entry::Row(row) => row.into_bad("duplicate_id", message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn second_of(text: &str) -> BadRow {
        let manifest =
            Manifest::from_reader(text.as_bytes(), Path::new("m.csv"), PathBuf::new()).unwrap();
        let second = manifest.into_iter().nth(1).unwrap();
        duplicate(second, Path::new("m.csv"))
    }

    #[test]
    fn a_repeated_row_and_a_reused_id_get_their_own_advice() {
        let repeat = second_of("model,file,prompt\nm,a.png,p\nm,a.png,p\n");
        assert_eq!(repeat.code, "duplicate_id");
        assert!(
            repeat
                .message
                .starts_with("m.csv, line 3: this row repeats an earlier row")
        );
        assert!(repeat.message.contains("add an id column"));

        let reused = second_of("id,model,file,prompt\nx,m,a.png,p\nx,m,b.png,q\n");
        assert!(
            reused.message.contains("id \"x\" is already used"),
            "{}",
            reused.message
        );
    }
}
