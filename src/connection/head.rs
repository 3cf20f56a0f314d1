//! Where a client connection is in its HTTP/1 stream, told from the bytes it sends: inside a
//! request head, inside a body, or between requests. The connection guard uses it to time
//! and size each request head; Pingora does the real parsing, so this tracker only needs to
//! find the head boundaries, and when it cannot follow (an upgrade, HTTP/2, framing it does
//! not understand) it stops tracking instead of guessing.

/// Longest header line kept for inspection; longer lines are counted, not read (framing
/// headers are short; a longer one is refused by Pingora anyway).
const MAX_LINE: usize = 256;

/// What the tracker knows about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Between requests: the next byte starts a head.
    Idle,
    /// Inside a request head: `bytes` so far.
    Head {
        /// Head bytes seen.
        bytes: usize,
    },
    /// Inside a request body.
    Body,
    /// Not HTTP/1 request heads any more (an upgrade, HTTP/2, unknown framing).
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Length(u64),
    ChunkSize { size: u64, digits: bool, ext: bool },
    ChunkData(u64),
    ChunkDataEnd { cr: bool },
    Trailer { line_len: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Head,
    Body(Body),
    Passthrough,
}

/// The tracker (see the module documentation).
#[derive(Debug)]
pub struct HeadTracker {
    state: State,
    head_bytes: usize,
    line: Vec<u8>,
    line_len: usize,
    first_line: bool,
    /// Framing learnt from the head being read.
    content_length: Option<u64>,
    chunked: bool,
    other_coding: bool,
    upgrade: bool,
    connect_or_preface: bool,
}

impl HeadTracker {
    /// A tracker for a new connection: its first head starts with the first byte.
    pub fn new() -> Self {
        HeadTracker {
            state: State::Idle,
            head_bytes: 0,
            line: Vec::with_capacity(64),
            line_len: 0,
            first_line: true,
            content_length: None,
            chunked: false,
            other_coding: false,
            upgrade: false,
            connect_or_preface: false,
        }
    }

    /// Where the connection is now.
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Idle => Phase::Idle,
            State::Head => Phase::Head {
                bytes: self.head_bytes,
            },
            State::Body(_) => Phase::Body,
            State::Passthrough => Phase::Passthrough,
        }
    }

    /// Stop tracking (the connection is not HTTP/1 request heads any more).
    pub fn pass_through(&mut self) {
        self.state = State::Passthrough;
    }

    /// Feed bytes the client sent. Returns `true` when a head started in them (the caller
    /// starts its clock then).
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut started = false;
        while !data.is_empty() {
            match &mut self.state {
                State::Passthrough => return started,
                State::Idle => {
                    // Stray CRLFs between requests are allowed (RFC 9112 §2.2).
                    if matches!(data[0], b'\r' | b'\n') {
                        data = &data[1..];
                        continue;
                    }
                    self.start_head();
                    started = true;
                }
                State::Head => {
                    let n = self.feed_head(data);
                    data = &data[n..];
                }
                State::Body(_) => {
                    let n = self.feed_body(data);
                    data = &data[n..];
                }
            }
        }
        started
    }

    fn start_head(&mut self) {
        self.state = State::Head;
        self.head_bytes = 0;
        self.line.clear();
        self.line_len = 0;
        self.first_line = true;
        self.content_length = None;
        self.chunked = false;
        self.other_coding = false;
        self.upgrade = false;
        self.connect_or_preface = false;
    }

    /// Consume head bytes up to the end of the head; returns how many were used.
    fn feed_head(&mut self, data: &[u8]) -> usize {
        for (i, &b) in data.iter().enumerate() {
            self.head_bytes += 1;
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                let empty = self.line_len == 0 || (self.line_len == 1 && line == b"\r");
                self.line_len = 0;
                if empty && !self.first_line {
                    self.end_head();
                    self.line = line;
                    self.line.clear();
                    return i + 1;
                }
                if !empty {
                    self.header_line(&line);
                }
                self.line = line;
                self.line.clear();
                continue;
            }
            self.line_len += 1;
            if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        data.len()
    }

    fn header_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.first_line {
            self.first_line = false;
            self.connect_or_preface = line.starts_with(b"CONNECT ") || line.starts_with(b"PRI ");
            return;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let first = value
                .split(|b| *b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            self.content_length = std::str::from_utf8(first).ok().and_then(|s| s.parse().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            if last.eq_ignore_ascii_case(b"chunked") {
                self.chunked = true;
            } else {
                self.other_coding = true;
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
    }

    fn end_head(&mut self) {
        self.state = if self.connect_or_preface || self.upgrade || self.other_coding {
            State::Passthrough
        } else if self.chunked {
            State::Body(Body::ChunkSize {
                size: 0,
                digits: false,
                ext: false,
            })
        } else {
            match self.content_length {
                Some(n) if n > 0 => State::Body(Body::Length(n)),
                _ => State::Idle,
            }
        };
    }

    /// Consume body bytes; returns how many were used.
    fn feed_body(&mut self, data: &[u8]) -> usize {
        let State::Body(body) = &mut self.state else {
            return data.len();
        };
        match body {
            Body::Length(left) => {
                let n = (*left).min(data.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::Idle;
                }
                n
            }
            Body::ChunkData(left) => {
                let n = (*left).min(data.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    *body = Body::ChunkDataEnd { cr: false };
                }
                n
            }
            Body::ChunkDataEnd { cr } => {
                match (data[0], *cr) {
                    (b'\r', false) => *cr = true,
                    (b'\n', _) => {
                        *body = Body::ChunkSize {
                            size: 0,
                            digits: false,
                            ext: false,
                        }
                    }
                    _ => self.state = State::Passthrough,
                }
                1
            }
            Body::ChunkSize { size, digits, ext } => {
                let b = data[0];
                match b {
                    b'\n' => {
                        if !*digits {
                            self.state = State::Passthrough;
                        } else if *size == 0 {
                            *body = Body::Trailer { line_len: 0 };
                        } else {
                            *body = Body::ChunkData(*size);
                        }
                    }
                    b'\r' => {}
                    _ if *ext => {}
                    b';' | b' ' | b'\t' => *ext = true,
                    _ => match (b as char).to_digit(16) {
                        Some(d) if *size < (1 << 56) => {
                            *size = *size * 16 + d as u64;
                            *digits = true;
                        }
                        _ => self.state = State::Passthrough,
                    },
                }
                1
            }
            Body::Trailer { line_len } => {
                match data[0] {
                    b'\n' if *line_len == 0 => self.state = State::Idle,
                    b'\n' => *line_len = 0,
                    b'\r' => {}
                    _ => *line_len += 1,
                }
                1
            }
        }
    }
}

impl Default for HeadTracker {
    fn default() -> Self {
        HeadTracker::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(t: &mut HeadTracker, parts: &[&[u8]]) -> Vec<Phase> {
        parts
            .iter()
            .map(|p| {
                t.feed(p);
                t.phase()
            })
            .collect()
    }

    #[test]
    fn heads_bodies_and_pipelining() {
        let mut t = HeadTracker::new();
        assert_eq!(t.phase(), Phase::Idle);
        assert!(t.feed(b"GET / HTTP/1.1\r\nHost: a"));
        assert_eq!(t.phase(), Phase::Head { bytes: 23 });
        t.feed(b"\r\n\r\n");
        assert_eq!(t.phase(), Phase::Idle);
        // A body, then the next request in the same bytes.
        t.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\n");
        assert!(matches!(t.phase(), Phase::Head { .. }));
        t.feed(b"\r\n");
        assert_eq!(t.phase(), Phase::Idle);
    }

    #[test]
    fn chunked_bodies() {
        let mut t = HeadTracker::new();
        let phases = feed_all(
            &mut t,
            &[
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"5;ext=1\r\nhel",
                b"lo\r\n0\r\n",
                b"X-Trailer: 1\r\n\r\n",
            ],
        );
        assert_eq!(phases, [Phase::Body, Phase::Body, Phase::Body, Phase::Idle]);
        t.feed(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(t.phase(), Phase::Idle);
    }

    #[test]
    fn stops_where_it_cannot_follow() {
        for head in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
        ] {
            let mut t = HeadTracker::new();
            t.feed(head);
            assert_eq!(
                t.phase(),
                Phase::Passthrough,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        let mut t = HeadTracker::new();
        t.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert_eq!(t.phase(), Phase::Passthrough);
    }

    #[test]
    fn counts_long_heads_without_keeping_them() {
        let mut t = HeadTracker::new();
        t.feed(b"GET / HTTP/1.1\r\nX-Big: ");
        for _ in 0..100 {
            t.feed(&[b'a'; 1000]);
        }
        assert!(matches!(t.phase(), Phase::Head { bytes } if bytes > 100_000));
        assert!(t.line.capacity() <= 1024);
    }
}
