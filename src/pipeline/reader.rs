//! The manifest reader thread: streams entries to the workers, skipping rows an earlier run
//! finished and turning repeated ids into per-row errors.
//!
//! It runs on a blocking thread (CSV parsing is synchronous) and hands rows over a bounded
//! channel, so it runs ahead of the workers by at most one channel's worth of rows.

use std::collections::HashSet;

use tokio::sync::mpsc;

use crate::manifest::{BadRow, Entry, Manifest, id_key};
use crate::output::Event;
use crate::output::resume::IdSet;

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

/// Reads `manifest` to the end or until the workers stop listening. `done` holds the ids an
/// earlier run finished `ok`; `duplicates` the ids a first pass found more than once
/// ([`crate::manifest::scan_ids`]). Sends the number of skipped rows to the reporter at the
/// end.
pub fn read(
    manifest: Manifest,
    done: &IdSet,
    duplicates: &HashSet<u64>,
    rows: mpsc::Sender<Entry>,
    events: mpsc::Sender<Event>,
) {
    let mut repeats = Repeats::new(duplicates);
    let mut skipped = 0u64;
    let path = manifest.path().to_owned();
    for entry in manifest {
        let key = id_key(entry.id());
        let entry = if repeats.seen_before(key) {
            Entry::Bad(duplicate(entry, &path))
        } else if done.contains(&key) {
            skipped += 1;
            continue;
        } else {
            entry
        };
        if rows.blocking_send(entry).is_err() {
            break; // the run stopped; compaction accounts for the rest
        }
    }
    let _ = events.blocking_send(Event::Skipped(skipped));
}

/// The error row for a second (or later) row with an id already used.
pub fn duplicate(entry: Entry, manifest: &std::path::Path) -> BadRow {
    let message = format!(
        "{}, line {}: id {:?} is already used by an earlier row; ids must be unique (give this \
         row its own id, or remove the id column to let dashbatch derive ids)",
        manifest.display(),
        entry.line(),
        entry.id()
    );
    match entry {
        Entry::Bad(mut bad) => {
            bad.code = "duplicate_id";
            bad.message = message;
            bad
        }
        Entry::Row(row) => row.into_bad("duplicate_id", message),
    }
}
