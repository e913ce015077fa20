//! Physical line numbers of manifest records, and quotes still open at the end of the file.
//!
//! The csv crate gives each record the position where its previous read stopped and counts
//! only `\n` bytes. Both are wrong for what users see in an editor: after a `\r\n` it stops
//! before the `\n` (so a CRLF manifest is off by one), and it counts from before any blank
//! lines that precede the record. It also parses a quote left open as one last field that
//! runs to the end of the file.
//!
//! [`Lines`] sits between the file and the csv reader. It follows the quoting rules of the
//! dialect the manifest is read with (csv-core's defaults: `,` between fields, `"` around a
//! field with `""` for a quote inside, a record ending at `\r\n`, `\r` or `\n`, blank lines
//! skipped) just far enough to know where each record starts and on which line. It is not a
//! parser: it keeps no field data, only a state, a line count, and the starts of records the
//! csv reader has read ahead but not yet returned. The csv reader reads through a fixed
//! buffer, so that queue never holds more than a buffer's worth of records.
//!
//! Lines are counted as an editor counts them: `\r\n` ends one line, and so does a lone `\r`
//! or a lone `\n`, inside a quoted field or outside.
//!
//! A quote left open is only known at the end of the input, after the csv reader has taken
//! every later line into that field. So the counter also notes where the line after the
//! opening quote starts; the manifest reader seeks back there (through [`Seek`], which
//! resets the counter) and reads on, so the rows after a stray quote still become rows.

use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};

const BOM: [u8; 3] = *b"\xef\xbb\xbf";

/// Where a record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Start {
    /// Byte offset in the stream the csv reader sees (after any BOM).
    pub offset: u64,
    /// 1-based physical line.
    pub line: u64,
}

/// A quoted field still open at the end of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unclosed {
    /// Byte offset of the start of the record that holds the field.
    pub record: u64,
    /// Line of the opening quote.
    pub line: u64,
    /// Where the line after the opening quote starts; `None` when the input ends on the
    /// quote's own line.
    pub next: Option<Start>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between records: line ends here are blank lines.
    Between,
    /// At the start of a field inside a record.
    FieldStart,
    /// Inside a field that did not start with a quote: a quote here is text.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just after a quote inside a quoted field: either the closing quote or the first of `""`.
    Quote,
}

/// A [`Read`] adapter that notes where records start; see the module docs.
pub(super) struct Lines<R> {
    inner: R,
    /// The first bytes of the input, held back to drop a UTF-8 BOM. csv-core drops one only
    /// when all three bytes arrive in its first read; dropping it here makes that certain, and
    /// keeps the offsets below equal to the csv reader's.
    head: [u8; 3],
    head_len: usize,
    head_sent: usize,
    head_read: bool,
    /// Bytes dropped before the stream the csv reader sees (a BOM), for seeking the input.
    skipped: u64,
    /// Offset of the next byte handed on.
    offset: u64,
    /// Line of the next byte handed on.
    line: u64,
    prev_cr: bool,
    state: State,
    /// Line of the quote that opened the current quoted field.
    quote_line: u64,
    /// Start of the line after `quote_line`, once seen.
    after_quote: Option<Start>,
    /// Offset of the start of the record being scanned.
    record: u64,
    /// Records started so far, for tests that check this agrees with the csv reader.
    #[cfg(test)]
    records: u64,
    /// Starts of records the csv reader has not yet returned, oldest first.
    starts: VecDeque<Start>,
    unclosed: Option<Unclosed>,
}

impl<R: Read> Lines<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            head: [0; 3],
            head_len: 0,
            head_sent: 0,
            head_read: false,
            skipped: 0,
            offset: 0,
            line: 1,
            prev_cr: false,
            state: State::Between,
            quote_line: 0,
            after_quote: None,
            record: 0,
            #[cfg(test)]
            records: 0,
            starts: VecDeque::new(),
            unclosed: None,
        }
    }

    /// The start of the first record at or after `offset`, the position where the csv reader
    /// began reading a record (it skips the rest of a `\r\n` and blank lines from there).
    /// Starts before `offset` belong to records already returned and are dropped.
    pub fn start_at(&mut self, offset: u64) -> Option<Start> {
        while self.starts.front().is_some_and(|s| s.offset < offset) {
            self.starts.pop_front();
        }
        self.starts.front().copied()
    }

    /// The line the next byte is on: where a read that fails would have continued.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Set once the input has ended inside a quoted field.
    pub fn unclosed(&self) -> Option<Unclosed> {
        self.unclosed
    }

    /// Counts what follows as starting on `line`, after the csv reader sought this reader.
    pub fn set_line(&mut self, line: u64) {
        self.line = line;
    }

    #[cfg(test)]
    pub fn records(&self) -> u64 {
        self.records
    }

    fn read_head(&mut self) -> io::Result<()> {
        while self.head_len < BOM.len() {
            match self.inner.read(&mut self.head[self.head_len..]) {
                Ok(0) => break,
                Ok(n) => self.head_len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.head == BOM {
            self.head_len = 0;
            self.skipped = BOM.len() as u64;
        }
        self.head_read = true;
        Ok(())
    }

    fn scan(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            // The first byte on the line after an opening quote (not the `\n` of its `\r\n`)
            // is where reading goes on if the quote never closes.
            if self.state == State::Quoted
                && self.after_quote.is_none()
                && self.line > self.quote_line
                && !(self.prev_cr && bytes[i] == b'\n')
            {
                self.after_quote = Some(Start {
                    offset: self.offset,
                    line: self.line,
                });
            }
            // Inside a field, a run of plain text changes nothing but the offset: skip it at
            // memchr speed rather than byte by byte (most of a manifest is prompt text).
            let plain = match self.state {
                State::Unquoted => memchr::memchr3(b',', b'\r', b'\n', &bytes[i..]),
                State::Quoted => memchr::memchr3(b'"', b'\r', b'\n', &bytes[i..]),
                _ => Some(0),
            }
            .unwrap_or(bytes.len() - i);
            if plain > 0 {
                i += plain;
                self.offset += plain as u64;
                self.prev_cr = false;
                continue;
            }
            let b = bytes[i];
            i += 1;
            let end = b == b'\r' || b == b'\n';
            self.state = match self.state {
                State::Between if end => State::Between,
                State::Between => {
                    self.record = self.offset;
                    #[cfg(test)]
                    {
                        self.records += 1;
                    }
                    self.starts.push_back(Start {
                        offset: self.offset,
                        line: self.line,
                    });
                    self.field_start(b)
                }
                State::FieldStart => self.field_start(b),
                State::Unquoted | State::Quote if end => State::Between,
                State::Unquoted | State::Quote if b == b',' => State::FieldStart,
                State::Unquoted => State::Unquoted,
                State::Quote if b == b'"' => State::Quoted,
                State::Quote => State::Unquoted,
                State::Quoted if b == b'"' => State::Quote,
                State::Quoted => State::Quoted,
            };
            if b == b'\r' || (b == b'\n' && !self.prev_cr) {
                self.line += 1;
            }
            self.prev_cr = b == b'\r';
            self.offset += 1;
        }
    }

    fn field_start(&mut self, b: u8) -> State {
        match b {
            b'"' => {
                self.quote_line = self.line;
                self.after_quote = None;
                State::Quoted
            }
            b',' => State::FieldStart,
            b'\r' | b'\n' => State::Between,
            _ => State::Unquoted,
        }
    }
}

impl<R: Read + Seek> Lines<R> {
    /// The bytes from `from` to `to` of the stream the csv reader sees, read straight from
    /// the input: the reader must seek somewhere afterwards.
    pub fn bytes_between(&mut self, from: u64, to: u64) -> io::Result<Vec<u8>> {
        self.inner.seek(SeekFrom::Start(self.skipped + from))?;
        let mut bytes = Vec::new();
        (&mut self.inner)
            .take(to.saturating_sub(from))
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

/// Seeking (only from the start) puts the counter between records at that offset; the line
/// count is the caller's to set, through [`Lines::set_line`]. The csv reader seeks through
/// this when it is told to.
impl<R: Read + Seek> Seek for Lines<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let SeekFrom::Start(offset) = pos else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a manifest is only sought from its start",
            ));
        };
        if !self.head_read {
            self.read_head()?;
        }
        self.inner.seek(SeekFrom::Start(self.skipped + offset))?;
        self.head_sent = self.head_len;
        self.offset = offset;
        self.prev_cr = false;
        self.state = State::Between;
        self.after_quote = None;
        self.starts.clear();
        self.unclosed = None;
        Ok(offset)
    }
}

impl<R: Read> Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.head_read {
            self.read_head()?;
        }
        let n = if self.head_sent < self.head_len {
            let n = buf.len().min(self.head_len - self.head_sent);
            buf[..n].copy_from_slice(&self.head[self.head_sent..self.head_sent + n]);
            self.head_sent += n;
            n
        } else {
            self.inner.read(buf)?
        };
        if n == 0 && self.state == State::Quoted {
            self.unclosed = Some(Unclosed {
                record: self.record,
                line: self.quote_line,
                next: self.after_quote,
            });
        }
        self.scan(&buf[..n]);
        Ok(n)
    }
}
