//! Server-sent events framing: bytes as they arrive → whole events ([`Frame`]).
//!
//! Written here rather than taken from a crate because DashScope's native stream puts the
//! HTTP status of each event in a comment line (`:HTTP_STATUS/429`), and comments are exactly
//! what an SSE parser is meant to drop (`eventsource-stream` does). The rules are the HTML
//! standard's: lines end in CRLF, LF or CR (also split across chunks); `field:value` with one
//! optional space after the colon; several `data` lines join with `\n`; a blank line ends an
//! event, and an event without data is not dispatched; an unfinished event at the end of the
//! stream is dropped. Deliberately not here: what an event means (each API's mapping).

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Frame {
    pub event: Option<String>,
    pub data: String,
    /// DashScope's `:HTTP_STATUS/<code>` comment, when the event had one.
    pub status: Option<u16>,
}

/// Splits a byte stream into [`Frame`]s. Holds at most one unfinished line and event; the
/// caller caps the stream as a whole.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    line: Vec<u8>,
    /// The last byte seen was a CR: an LF next is the same line end, not an empty line.
    after_cr: bool,
    pending: Frame,
    has_data: bool,
}

impl Decoder {
    /// Feeds `chunk`, appending every event it completes to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Frame>) {
        if chunk.is_empty() {
            return;
        }
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(at) = memchr::memchr2(b'\r', b'\n', chunk) {
            self.line.extend_from_slice(&chunk[..at]);
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, out);
            let crlf = chunk[at] == b'\r' && chunk.get(at + 1) == Some(&b'\n');
            if chunk[at] == b'\r' && at + 1 == chunk.len() {
                self.after_cr = true;
            }
            chunk = &chunk[at + if crlf { 2 } else { 1 }..];
        }
        self.line.extend_from_slice(chunk);
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<Frame>) {
        // Lossy: a broken character in one answer must not stop the stream; UTF-8 split
        // across chunks is whole again here, since a line is decoded only once complete.
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            let frame = std::mem::take(&mut self.pending);
            if std::mem::take(&mut self.has_data) {
                out.push(frame);
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            if let Some(status) = comment.strip_prefix("HTTP_STATUS/") {
                self.pending.status = status.trim().parse().ok();
            }
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.pending.data.push('\n');
                }
                self.pending.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.pending.event = Some(value.to_owned()),
            // `id` and `retry` are for reconnecting, which a model call never does.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, &mut out);
        }
        out
    }

    fn data(text: &str) -> Frame {
        Frame {
            data: text.to_owned(),
            ..Frame::default()
        }
    }

    #[test]
    fn compatible_chunks_and_done() {
        let stream = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        assert_eq!(decode(&[stream]), vec![data("{\"a\":1}"), data("[DONE]")]);
    }

    #[test]
    fn native_frames_keep_event_and_status_comment() {
        let stream = b"id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"x\":1}\n\n\
                       id:2\nevent:error\n:HTTP_STATUS/429\ndata:{\"code\":\"Throttling\"}\n\n";
        let frames = decode(&[stream]);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].event.as_deref(), Some("result"));
        assert_eq!(frames[0].status, Some(200));
        assert_eq!(frames[0].data, "{\"x\":1}");
        assert_eq!(frames[1].event.as_deref(), Some("error"));
        assert_eq!(frames[1].status, Some(429));
    }

    #[test]
    fn every_split_of_a_stream_gives_the_same_frames() {
        let stream: &[u8] = "id:1\r\nevent:result\r\n:HTTP_STATUS/200\r\ndata:é1\r\n\r\n\
                             data: a\rdata: b\r\rdata:c\n\n"
            .as_bytes();
        let whole = decode(&[stream]);
        assert_eq!(whole.len(), 3, "{whole:?}");
        assert_eq!(whole[0].data, "é1");
        assert_eq!(whole[1].data, "a\nb");
        assert_eq!(whole[2].data, "c");
        for cut in 0..stream.len() {
            assert_eq!(
                decode(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let mut bytes: Vec<&[u8]> = stream.chunks(1).collect();
        bytes.insert(5, b"");
        bytes.insert(7, b"");
        assert_eq!(decode(&bytes), whole);
    }

    #[test]
    fn multi_line_data_joins_with_newline() {
        let frames = decode(&[b"data: one\ndata:two\ndata\n\n"]);
        assert_eq!(frames, vec![data("one\ntwo\n")]);
    }

    #[test]
    fn events_without_data_and_unfinished_events_are_not_dispatched() {
        let frames = decode(&[b": keep-alive\n\nevent:ping\n\ndata: cut"]);
        assert!(frames.is_empty(), "{frames:?}");
        // The event name does not leak into the next event.
        let frames = decode(&[b"event:ping\n\ndata: x\n\n"]);
        assert_eq!(frames, vec![data("x")]);
    }
}
