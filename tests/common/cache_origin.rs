//! A scripted origin for the cache tests (tests/cache.rs, tests/cache_rfc.rs): per path, the
//! status, headers and body it answers (304 when a validator matches), counting the requests
//! that reach it and keeping their headers.
//!
//! Not part of `common/mod.rs` (the other test binaries do not need it): include it with
//! `#[path = "common/cache_origin.rs"] mod cache_origin;`. Standard library only. It sends
//! exactly the scripted headers plus `x-serial` and `content-length`: no `Date` unless the
//! script asks for one.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the origin answers on a path.
#[derive(Clone)]
pub struct Script {
    pub status: u16,
    /// Sent in this order, one line each (a name may repeat).
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Answer 304 when `If-None-Match` equals this.
    pub etag: Option<String>,
    /// Answer 304 when `If-Modified-Since` equals this.
    pub last_modified: Option<String>,
    pub delay_ms: u64,
    /// Send `Date: <now + offset seconds>`, computed when the response is written.
    pub date_offset: Option<i64>,
}

impl Script {
    /// 200 with this `Cache-Control` (none when empty) and body.
    pub fn ok(cache_control: &str, body: &str) -> Script {
        let headers = if cache_control.is_empty() {
            vec![]
        } else {
            vec![("cache-control".into(), cache_control.into())]
        };
        Script {
            status: 200,
            headers,
            body: body.into(),
            etag: None,
            last_modified: None,
            delay_ms: 0,
            date_offset: None,
        }
    }

    /// Another header line.
    pub fn header(mut self, k: &str, v: &str) -> Script {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn status(mut self, status: u16) -> Script {
        self.status = status;
        self
    }

    /// `Date` = now + `offset` seconds at the time of each response.
    pub fn dated(mut self, offset: i64) -> Script {
        self.date_offset = Some(offset);
        self
    }
}

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lower-cased names; the last line wins for a repeated name.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
pub struct OriginState {
    pub scripts: Mutex<HashMap<String, Script>>,
    pub hits: Mutex<HashMap<String, usize>>,
    /// Request headers of the last request per path.
    pub last: Mutex<HashMap<String, HashMap<String, String>>>,
    /// Every request, in order.
    pub log: Mutex<Vec<Seen>>,
    /// Close every connection without answering.
    pub down: AtomicBool,
    pub total: AtomicUsize,
}

pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
}

impl Origin {
    pub fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        let st = state.clone();
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let st = st.clone();
                thread::spawn(move || serve(s, &st));
            }
        });
        Origin { addr, state }
    }

    pub fn script(&self, path: &str, s: Script) {
        self.state.scripts.lock().unwrap().insert(path.into(), s);
    }

    /// Requests (any method) that reached the origin on `path`.
    pub fn hits(&self, path: &str) -> usize {
        *self.state.hits.lock().unwrap().get(path).unwrap_or(&0)
    }

    /// Requests with `method` that reached the origin on `path`.
    pub fn method_hits(&self, method: &str, path: &str) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    pub fn last_header(&self, path: &str, name: &str) -> Option<String> {
        self.state
            .last
            .lock()
            .unwrap()
            .get(path)
            .and_then(|h| h.get(name).cloned())
    }

    /// Every request so far, for failure messages.
    pub fn log(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, st: &OriginState) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        let _ = reader.read_exact(&mut body);
        if st.down.load(Ordering::SeqCst) {
            return;
        }
        let path = target.split('?').next().unwrap_or("/").to_string();
        st.total.fetch_add(1, Ordering::SeqCst);
        *st.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        st.last
            .lock()
            .unwrap()
            .insert(path.clone(), headers.clone());
        st.log.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
        });
        let script = st
            .scripts
            .lock()
            .unwrap()
            .get(&path)
            .cloned()
            .unwrap_or(Script {
                status: 200,
                headers: vec![],
                body: format!("{method} {target}"),
                etag: None,
                last_modified: None,
                delay_ms: 0,
                date_offset: None,
            });
        if script.delay_ms > 0 {
            thread::sleep(Duration::from_millis(script.delay_ms));
        }
        let not_modified = script
            .etag
            .as_ref()
            .is_some_and(|e| headers.get("if-none-match") == Some(e))
            || script
                .last_modified
                .as_ref()
                .is_some_and(|l| headers.get("if-modified-since") == Some(l));
        let (status, resp_body) = if not_modified {
            (304, String::new())
        } else {
            (script.status, script.body.clone())
        };
        let mut resp = format!("HTTP/1.1 {status} X\r\n");
        if let Some(off) = script.date_offset {
            resp.push_str(&format!("date: {}\r\n", httpdate_offset(off)));
        }
        for (k, v) in &script.headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(e) = &script.etag {
            resp.push_str(&format!("etag: {e}\r\n"));
        }
        if let Some(l) = &script.last_modified {
            resp.push_str(&format!("last-modified: {l}\r\n"));
        }
        // A per-response serial shows which origin answer a client got.
        resp.push_str(&format!(
            "x-serial: {}\r\n",
            st.total.load(Ordering::SeqCst)
        ));
        let body_bytes = if method == "HEAD" || status == 304 {
            ""
        } else {
            resp_body.as_str()
        };
        resp.push_str(&format!(
            "content-length: {}\r\n\r\n{body_bytes}",
            if status == 304 { 0 } else { resp_body.len() }
        ));
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// RFC 9110 IMF-fixdate.
pub fn httpdate(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let days = secs / 86400;
    let (h, m, s) = ((secs % 86400) / 3600, (secs % 3600) / 60, secs % 60);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    let mon = MONTHS[(mo - 1) as usize];
    format!("{wd}, {d:02} {mon} {y} {h:02}:{m:02}:{s:02} GMT")
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// IMF-fixdate of now + `offset` seconds.
pub fn httpdate_offset(offset: i64) -> String {
    let now = SystemTime::now();
    let t = if offset >= 0 {
        now + Duration::from_secs(offset as u64)
    } else {
        now - Duration::from_secs(offset.unsigned_abs())
    };
    httpdate(t)
}

/// Parse a strict IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds; `None` if
/// it is not one (wrong shape, weekday or field range).
pub fn parse_imf_fixdate(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || &s[25..] != " GMT" {
        return None;
    }
    let parts: Vec<&str> = s[5..25].split(' ').collect();
    let [d, mon, y, hms] = parts.as_slice() else {
        return None;
    };
    let num = |t: &str, len: usize| -> Option<i64> {
        (t.len() == len && t.bytes().all(|c| c.is_ascii_digit())).then(|| t.parse().ok())?
    };
    let d = num(d, 2)?;
    let y = num(y, 4)?;
    let mo = MONTHS.iter().position(|m| m == mon)? as i64 + 1;
    let hms: Vec<&str> = hms.split(':').collect();
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    let (h, mi, se) = (num(h, 2)?, num(mi, 2)?, num(se, 2)?);
    if !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + se;
    // Round trip: catches 31 Feb and a wrong weekday.
    if secs < 0 || httpdate(UNIX_EPOCH + Duration::from_secs(secs as u64)) != s {
        return None;
    }
    Some(secs)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
