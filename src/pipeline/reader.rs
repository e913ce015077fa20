//! The manifest reader thread: streams entries to the workers, skipping rows an earlier run
//! finished (while what they ask is unchanged) and turning repeated ids into per-row errors.
//!
//! It runs on a blocking thread (CSV parsing is synchronous) and hands rows over a bounded
//! channel, so it runs ahead of the workers by at most one channel's worth of rows.

use std::collections::HashSet;

use tokio::sync::mpsc;

use super::checks::{Repeats, duplicate};
use crate::manifest::{Entry, Manifest, Shard, id_key};
use crate::output::Event;
use crate::output::results::resume::{Done, InputDigest, Resumed};

/// Reads `manifest` to the end or until the workers stop listening. `done` holds the `ok`
/// lines of earlier runs; `duplicates` the ids a first pass found more than once
/// ([`crate::manifest::scan_ids`]). A row is skipped when a line answers what it asks now;
/// each row sent carries its [`InputDigest`], taken here, before its file is read, so that a
/// file rewritten later gives a digest that no longer matches. Sends the number of skipped
/// rows to the reporter as it goes (before each row it hands on, so the progress bar's count
/// of rows to do is right before that row can finish), and of changed rows at the end. With a
/// `shard`, rows of other shards are passed over as if the manifest did not hold them. With
/// `limit` (`--limit N`) it stops after sending N rows: the rows after them are left to
/// compaction, which writes them as `not_attempted` for the next run, as it does for a run
/// that was stopped.
pub fn read(
    manifest: Manifest,
    shard: Option<Shard>,
    done: &Done,
    duplicates: &HashSet<u64>,
    limit: Option<u64>,
    rows: mpsc::Sender<Entry>,
    events: mpsc::Sender<Event>,
) {
    let mut sent = 0u64;
    let mut repeats = Repeats::new(duplicates);
    let (mut skipped, mut changed) = (0u64, 0u64);
    let path = manifest.path().to_owned();
    for entry in manifest {
        // Checked before the next row is read, so that rows a resume skips (already `ok`)
        // do not count: N is the number of rows this run does.
        if limit.is_some_and(|limit| sent >= limit) {
            break;
        }
        if shard.is_some_and(|shard| !shard.owns(entry.id())) {
            continue;
        }
        let key = id_key(entry.id());
        let earlier = repeats.seen_before(key, &entry);
        let entry = match (earlier, entry) {
            (Some(earlier), entry) => Entry::Bad(duplicate(entry, &path, earlier)),
            (None, Entry::Row(mut row)) => {
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
            (None, bad) => bad,
        };
        if skipped > 0 {
            let _ = events.blocking_send(Event::Skipped(std::mem::take(&mut skipped)));
        }
        if rows.blocking_send(entry).is_err() {
            break; // the run stopped; compaction accounts for the rest
        }
        sent += 1;
    }
    if skipped > 0 {
        let _ = events.blocking_send(Event::Skipped(skipped));
    }
    let _ = events.blocking_send(Event::Changed(changed));
}
