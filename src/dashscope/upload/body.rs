//! The file part of an upload as a stream, and what that stream learns on the way: when the
//! host last took a piece of it (the stall clock), and whether the bytes sent were the bytes
//! the caller hashed.
//!
//! A file is read and hashed on the blocking pool one [`CHUNK`] at a time, by offset
//! (`pread`), so one handle serves every attempt. The last chunk is held back until the end
//! of the file has been read and the hash and length checked: on a mismatch the stream fails
//! instead of yielding it, the request is cut short, and the host never receives a whole
//! body, so it stores nothing under a key that names other bytes.
//!
//! Deliberately not here: what a mismatch means for the row (the pipeline hashes again and
//! uploads under a fresh credential), and any timing decision (see `super::post_form`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Bytes read per step. Large enough that the hand-off to the blocking pool (a few µs) is
/// amortised, small enough that an upload holds little: the chunk held back plus the one
/// being read, 512 KiB per upload slot.
pub(super) const CHUNK: usize = 256 * 1024;

/// When the host last asked for more of the body. Shared by the body stream, which ticks it,
/// and the stall watchdog, which reads it. Milliseconds since `start` in an atomic: ticks
/// come from hyper's task, reads from the request's.
#[derive(Clone)]
pub(super) struct Progress {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Progress {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn tick(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// Resolves once nothing has moved for `stall`: no piece of the body taken and (after
    /// the last one) no answer. Never resolves if the deadline is past what `Instant` holds.
    pub(super) async fn stalled(&self, stall: Duration) {
        loop {
            let Some(deadline) = self.last().checked_add(stall) else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// How the body stream ended, for the caller to read once the request is over.
#[derive(Clone, Default)]
pub(super) struct Ending(Arc<Mutex<Option<End>>>);

#[derive(Debug)]
pub(super) enum End {
    /// Every byte was read, and they had the expected length (and hash, for a file).
    Complete,
    /// The bytes read are not the ones hashed: the file changed, grew or shrank.
    Mismatch(String),
    /// Reading the file failed.
    Unreadable(io::Error),
}

impl Ending {
    fn set(&self, end: End) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
    }

    /// `None`: the stream never reached its end (the request ended first).
    pub(super) fn take(&self) -> Option<End> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What the stream checks the file against.
pub(super) struct Expect {
    pub(super) len: u64,
    pub(super) sha256: [u8; 32],
}

struct Reader {
    file: Arc<File>,
    expect: Expect,
    offset: u64,
    hasher: Sha256,
    held: Option<Bytes>,
    done: bool,
    progress: Progress,
    ending: Ending,
}

/// The file as a body stream, verified as it goes (see the module notes).
pub(super) fn file_stream(
    file: Arc<File>,
    expect: Expect,
    progress: Progress,
    ending: Ending,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let reader = Reader {
        file,
        expect,
        offset: 0,
        hasher: Sha256::new(),
        held: None,
        done: false,
        progress,
        ending,
    };
    futures::stream::try_unfold(reader, |mut r| async move {
        // Polled again: hyper has taken the previous piece.
        r.progress.tick();
        loop {
            if r.done {
                return Ok(None);
            }
            match r.next_chunk().await? {
                Some(chunk) => {
                    if let Some(previous) = r.held.replace(chunk) {
                        return Ok(Some((previous, r)));
                    }
                }
                None => {
                    r.done = true;
                    r.verify()?;
                    if let Some(last) = r.held.take() {
                        return Ok(Some((last, r)));
                    }
                }
            }
        }
    })
}

impl Reader {
    /// The next chunk, read and hashed on the blocking pool; `None` at the end of the file.
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let file = Arc::clone(&self.file);
        let offset = self.offset;
        let mut hasher = std::mem::take(&mut self.hasher);
        let read = tokio::task::spawn_blocking(move || {
            let buf = read_at_most(&file, offset, CHUNK)?;
            hasher.update(&buf);
            Ok::<_, io::Error>((hasher, buf))
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        let (hasher, buf) = match read {
            Ok(read) => read,
            Err(err) => {
                let shown = io::Error::new(err.kind(), err.to_string());
                self.ending.set(End::Unreadable(err));
                return Err(shown);
            }
        };
        self.hasher = hasher;
        self.offset += buf.len() as u64;
        if self.offset > self.expect.len {
            // Never hand the host more than the length the form declared.
            return Err(self.mismatch(format!(
                "it grew past the {} bytes it had when it was hashed",
                self.expect.len
            )));
        }
        Ok((!buf.is_empty()).then(|| Bytes::from(buf)))
    }

    fn verify(&mut self) -> io::Result<()> {
        if self.offset != self.expect.len {
            return Err(self.mismatch(format!(
                "it shrank to {} bytes from the {} it had when it was hashed",
                self.offset, self.expect.len
            )));
        }
        let sha256: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if sha256 != self.expect.sha256 {
            return Err(self
                .mismatch("its bytes are no longer the ones hashed before the upload".to_owned()));
        }
        self.ending.set(End::Complete);
        Ok(())
    }

    fn mismatch(&self, why: String) -> io::Error {
        let err = io::Error::other(why.clone());
        self.ending.set(End::Mismatch(why));
        err
    }
}

/// Up to `max` bytes at `offset`, fewer only at the end of the file.
fn read_at_most(file: &File, offset: u64, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut n = 0;
    while n < max {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Bytes already in memory (and already hashed by the caller) as a body stream in
/// [`CHUNK`]s, so that the stall clock sees them taken piece by piece. `Bytes::slice`
/// shares the buffer: no copy.
pub(super) fn bytes_stream(
    content: Bytes,
    progress: Progress,
    ending: Ending,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(0usize, move |at| {
        let (content, progress, ending) = (content.clone(), progress.clone(), ending.clone());
        async move {
            progress.tick();
            if at >= content.len() {
                ending.set(End::Complete);
                return None;
            }
            let end = (at + CHUNK).min(content.len());
            Some((Ok(content.slice(at..end)), end))
        }
    })
}
