//! The manifest reader thread: streams entries to the workers, skipping rows an earlier run
//! finished and turning repeated ids into per-row errors.
//!
//! It runs on a blocking thread (CSV parsing is synchronous) and hands rows over a bounded
//! channel, so it runs ahead of the workers by at most one channel's worth of rows.

use std::collections::HashSet;

use tokio::sync::mpsc;

use crate::manifest::{BadRow, Entry, Manifest};
use crate::output::Event;
use crate::output::resume::id_key;

/// Reads `manifest` to the end or until the workers stop listening. `done` holds the ids an
/// earlier run finished `ok`. Sends the number of skipped rows to the reporter at the end.
pub fn read(
    manifest: Manifest,
    done: HashSet<u64>,
    rows: mpsc::Sender<Entry>,
    events: mpsc::Sender<Event>,
) {
    // Ids seen so far: 8 bytes a row (plus the table's slack), the price of telling a
    // duplicate id apart from a resumed row without holding the manifest.
    let mut seen = HashSet::new();
    let mut skipped = 0u64;
    let path = manifest.path().to_owned();
    for entry in manifest {
        let key = id_key(entry.id());
        let entry = if !seen.insert(key) {
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
        Entry::Row(row) => BadRow {
            line: row.line,
            id: row.id,
            model: row.model,
            file: row.file,
            prompt: row.prompt,
            extra: row.extra,
            code: "duplicate_id",
            message,
        },
    }
}
