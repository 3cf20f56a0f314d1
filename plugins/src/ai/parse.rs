//! Reading `usage` out of OpenAI-compatible answers as they pass, without holding them back:
//! an SSE parser fed chunk by chunk (events may split anywhere across chunks; the carry-over
//! is bounded by [`MAX_EVENT_BYTES`]) and a bounded collector of a JSON body.

use bytes::Bytes;
use serde::Deserialize;

/// The longest SSE line or event data kept across chunks; a longer event is skipped.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The longest model name kept (a longer one is treated as unknown).
pub const MAX_MODEL_BYTES: usize = 128;

/// Token counts as an answer reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// `usage.prompt_tokens` (0 when absent).
    pub prompt: u64,
    /// `usage.completion_tokens` (0 when absent).
    pub completion: u64,
    /// `usage.total_tokens`, or prompt + completion when absent.
    pub total: u64,
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

impl UsageJson {
    fn tokens(&self) -> Option<Tokens> {
        if self.prompt_tokens.is_none()
            && self.completion_tokens.is_none()
            && self.total_tokens.is_none()
        {
            return None;
        }
        let prompt = self.prompt_tokens.unwrap_or(0);
        let completion = self.completion_tokens.unwrap_or(0);
        Some(Tokens {
            prompt,
            completion,
            total: self
                .total_tokens
                .unwrap_or(prompt.saturating_add(completion)),
        })
    }
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
}

/// An answer (JSON body) or a stream chunk (SSE event data): only the fields read.
#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<UsageJson>,
    #[serde(default)]
    choices: Vec<Choice>,
}

fn bounded_model(m: Option<String>) -> Option<String> {
    m.filter(|m| !m.is_empty() && m.len() <= MAX_MODEL_BYTES)
}

/// An SSE stream parsed as it passes (`text/event-stream`, the WHATWG rules that matter here):
/// lines end with `\n` (a `\r` before it is dropped); `data:` lines of one event are joined
/// with `\n`; a blank line ends the event; other fields and comments are ignored. The event
/// data `[DONE]` ends an OpenAI stream. Each event's data is parsed as JSON only when it can
/// matter: it mentions `"usage"`, the model is not known yet, or content events are counted.
#[derive(Debug, Clone, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The current line was longer than the bound: drop it up to its end.
    line_overflow: bool,
    data: Vec<u8>,
    /// The current event was longer than the bound: skip it.
    event_overflow: bool,
    count_content: bool,
    /// The last `usage` seen (OpenAI sends it in the last event before `[DONE]`).
    pub usage: Option<Tokens>,
    /// The first `model` seen.
    pub model: Option<String>,
    /// Events whose `choices` carry a non-empty `delta.content` or `text` (counted only when
    /// asked).
    pub content_events: u64,
    /// `data: [DONE]` was seen.
    pub done: bool,
}

impl SseParser {
    /// A parser; `count_content` counts the events carrying content.
    pub fn new(count_content: bool) -> Self {
        SseParser {
            count_content,
            ..SseParser::default()
        }
    }

    /// Parse one chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(i);
            rest = &tail[1..];
            if self.line_overflow {
                self.line_overflow = false;
                self.line.clear();
                continue;
            }
            if self.line.is_empty() {
                self.line_done(head);
            } else if self.line.len() + head.len() > MAX_EVENT_BYTES {
                self.line.clear();
                self.event_overflow = true;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.line_done(&line);
                line.clear();
                self.line = line;
            }
        }
        if self.line_overflow {
            return;
        }
        if self.line.len() + rest.len() > MAX_EVENT_BYTES {
            self.line.clear();
            self.line_overflow = true;
            self.event_overflow = true;
        } else {
            self.line.extend_from_slice(rest);
        }
    }

    /// The stream ended: an event not closed by a blank line still counts.
    pub fn finish(&mut self) {
        if !self.line.is_empty() && !self.line_overflow {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line);
        }
        self.dispatch();
    }

    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            return;
        };
        if self.event_overflow {
            return;
        }
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if !self.data.is_empty() {
            self.data.push(b'\n');
        }
        if self.data.len() + value.len() > MAX_EVENT_BYTES {
            self.data.clear();
            self.event_overflow = true;
        } else {
            self.data.extend_from_slice(value);
        }
    }

    fn dispatch(&mut self) {
        let overflow = std::mem::replace(&mut self.event_overflow, false);
        let data = std::mem::take(&mut self.data);
        if !overflow && !data.is_empty() {
            self.event(&data);
        }
        let mut data = data;
        data.clear();
        self.data = data;
    }

    fn event(&mut self, data: &[u8]) {
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let parse = self.count_content || self.model.is_none() || contains(data, b"\"usage\"");
        if !parse {
            return;
        }
        let Ok(m) = serde_json::from_slice::<Message>(data) else {
            return;
        };
        if let Some(t) = m.usage.as_ref().and_then(UsageJson::tokens) {
            self.usage = Some(t);
        }
        if self.model.is_none() {
            self.model = bounded_model(m.model);
        }
        if self.count_content
            && m.choices.iter().any(|c| {
                c.delta
                    .as_ref()
                    .and_then(|d| d.content.as_deref())
                    .is_some_and(|s| !s.is_empty())
                    || c.text.as_deref().is_some_and(|s| !s.is_empty())
            })
        {
            self.content_events += 1;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A JSON answer collected as it passes (the chunks are shared, not copied, until the end),
/// at most `max` bytes: a longer body is given up on (`too_large`) and not parsed.
#[derive(Debug, Clone)]
pub struct JsonBody {
    parts: Vec<Bytes>,
    len: usize,
    max: usize,
    /// The body was longer than the bound.
    pub too_large: bool,
}

impl JsonBody {
    /// A collector of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        JsonBody {
            parts: Vec::new(),
            len: 0,
            max,
            too_large: false,
        }
    }

    /// Keep one chunk (a reference-counted handle to it).
    pub fn feed(&mut self, chunk: &Bytes) {
        if self.too_large || chunk.is_empty() {
            return;
        }
        if self.len + chunk.len() > self.max {
            self.too_large = true;
            self.parts = Vec::new();
            return;
        }
        self.len += chunk.len();
        self.parts.push(chunk.clone());
    }

    /// Parse what was collected: the usage and the model, when the body is a JSON object
    /// that has them.
    pub fn finish(&mut self) -> (Option<Tokens>, Option<String>) {
        if self.too_large {
            return (None, None);
        }
        let whole: Vec<u8> = self.parts.concat();
        self.parts = Vec::new();
        match serde_json::from_slice::<Message>(&whole) {
            Ok(m) => (
                m.usage.as_ref().and_then(UsageJson::tokens),
                bounded_model(m.model),
            ),
            Err(_) => (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n\
: a comment\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\r\n\r\n\
event: message\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"total_tokens\":14}}\n\n\
data: [DONE]\n\n";

    fn parse_in(chunks: &[&[u8]], count: bool) -> SseParser {
        let mut p = SseParser::new(count);
        for c in chunks {
            p.feed(c);
        }
        p.finish();
        p
    }

    #[test]
    fn sse_usage_whatever_the_chunk_boundaries() {
        let bytes = STREAM.as_bytes();
        let want = Some(Tokens {
            prompt: 12,
            completion: 2,
            total: 14,
        });
        // Every split into two chunks, and one byte at a time.
        for i in 0..=bytes.len() {
            let p = parse_in(&[&bytes[..i], &bytes[i..]], true);
            assert_eq!(p.usage, want, "split at {i}");
            assert_eq!(p.model.as_deref(), Some("gpt-4o"), "split at {i}");
            assert_eq!(p.content_events, 2, "split at {i}");
            assert!(p.done, "split at {i}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        let p = parse_in(&singles, true);
        assert_eq!((p.usage, p.content_events, p.done), (want, 2, true));
        // Not counting: content events are not parsed for.
        assert_eq!(parse_in(&[bytes], false).content_events, 0);
        assert_eq!(parse_in(&[bytes], false).usage, want);
    }

    #[test]
    fn sse_without_usage_multiline_data_and_unterminated_last_event() {
        let p = parse_in(
            &[b"data: {\"model\":\"m\",\ndata: \"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\"b\"}]}"],
            true,
        );
        assert_eq!(p.usage, None);
        assert_eq!(p.model.as_deref(), Some("m"));
        assert_eq!(
            p.content_events, 2,
            "joined data lines, then the last event"
        );
        assert!(!p.done);
    }

    #[test]
    fn sse_carry_over_is_bounded() {
        let mut p = SseParser::new(false);
        let big = vec![b'x'; 10_000];
        p.feed(b"data: {\"pad\":\"");
        for _ in 0..20 {
            p.feed(&big);
            assert!(p.line.len() <= MAX_EVENT_BYTES);
        }
        // The oversized event is skipped; the next one is read.
        p.feed(b"\"}\n\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n");
        p.finish();
        assert_eq!(
            p.usage,
            Some(Tokens {
                prompt: 1,
                completion: 2,
                total: 3
            })
        );
    }

    #[test]
    fn json_usage_and_bound() {
        let body = br#"{"id":"x","model":"gpt-4o-mini","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}"#;
        let mut j = JsonBody::new(1024);
        for c in body.chunks(7) {
            j.feed(&Bytes::copy_from_slice(c));
        }
        let (t, m) = j.finish();
        assert_eq!(
            t,
            Some(Tokens {
                prompt: 10,
                completion: 20,
                total: 30
            })
        );
        assert_eq!(m.as_deref(), Some("gpt-4o-mini"));
        let mut j = JsonBody::new(body.len() - 1);
        j.feed(&Bytes::copy_from_slice(body));
        assert!(j.too_large);
        assert_eq!(j.finish(), (None, None));
        let mut j = JsonBody::new(1024);
        j.feed(&Bytes::from_static(b"{\"usage\":null}"));
        assert_eq!(j.finish(), (None, None));
        let mut j = JsonBody::new(1024);
        j.feed(&Bytes::from_static(b"not json"));
        assert_eq!(j.finish(), (None, None));
    }
}
