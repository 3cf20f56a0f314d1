//! Backend host names to addresses: every A and AAAA record of a name becomes a backend.
//! With `[server] resolvers` the names are asked of those servers (DNS over UDP, a small
//! client below); without, of the system resolver (`getaddrinfo`: `/etc/hosts`, then
//! `/etc/resolv.conf`). Blocking: call it off the async workers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Mutex;
use std::time::Duration;
use tollgate_plugins::sync::lock;

/// The last good answer for every `(host, port)` of the running config, kept across
/// reloads: a pool is rebuilt only when an answer changed, and a failed lookup keeps the
/// last good one.
#[derive(Default)]
pub struct DnsCache {
    servers: Mutex<Vec<SocketAddr>>,
    answers: Mutex<HashMap<(String, u16), Vec<SocketAddr>>>,
}

impl DnsCache {
    /// Ask `servers` from now on (empty: the system resolver).
    pub fn set_servers(&self, servers: Vec<SocketAddr>) {
        let mut current = lock(&self.servers);
        if *current != servers {
            *current = servers;
            // Answers from other servers are not the answers of these.
            lock(&self.answers).clear();
        }
    }

    /// The addresses of `host:port`: the cached answer, else one resolved now.
    pub fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Some(a) = lock(&self.answers).get(&(host.to_string(), port)) {
            return Ok(a.clone());
        }
        let servers = lock(&self.servers).clone();
        let found = resolve(host, port, &servers)?;
        lock(&self.answers).insert((host.to_string(), port), found.clone());
        Ok(found)
    }

    /// Resolve `host:port` again: `Ok(true)` when the answer changed (and is now cached),
    /// `Err` when the lookup failed (the last good answer stays).
    pub fn refresh(&self, host: &str, port: u16) -> Result<bool, String> {
        let servers = lock(&self.servers).clone();
        let found = resolve(host, port, &servers)?;
        let mut answers = lock(&self.answers);
        let key = (host.to_string(), port);
        let changed = answers.get(&key) != Some(&found);
        answers.insert(key, found);
        Ok(changed)
    }
}

/// `host:port` (or `[v6]:port`) split; `None` when there is no valid port.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

/// Is this a name to resolve (not an IP literal)?
pub fn is_name(host: &str) -> bool {
    host.parse::<IpAddr>().is_err()
}

/// How long one server gets to answer one question.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);
/// The largest answer read (plain DNS over UDP).
const MAX_ANSWER: usize = 4096;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// Every address of `host` with `port`, sorted (so two answers compare equal when they name
/// the same set). An IP literal is its own answer.
pub fn resolve(host: &str, port: u16, servers: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut addrs: Vec<SocketAddr> = if servers.is_empty() {
        (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
            .collect()
    } else {
        let mut ips = Vec::new();
        let mut last_err = String::new();
        for qtype in [TYPE_A, TYPE_AAAA] {
            match ask_any(servers, host, qtype) {
                Ok(found) => ips.extend(found),
                Err(e) => last_err = e,
            }
        }
        if ips.is_empty() {
            return Err(if last_err.is_empty() {
                format!("{host:?} has no A or AAAA record")
            } else {
                last_err
            });
        }
        ips.into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
    };
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{host:?} has no address"));
    }
    Ok(addrs)
}

/// Ask the servers in turn until one answers.
fn ask_any(servers: &[SocketAddr], host: &str, qtype: u16) -> Result<Vec<IpAddr>, String> {
    let mut last = String::from("no DNS server configured");
    for s in servers {
        match ask(*s, host, qtype) {
            Ok(v) => return Ok(v),
            Err(e) => last = format!("DNS server {s}: {e}"),
        }
    }
    Err(last)
}

/// One question to one server.
fn ask(server: SocketAddr, host: &str, qtype: u16) -> Result<Vec<IpAddr>, String> {
    // Unpredictable enough to tell our answer from a stray one; not a security boundary
    // (the servers are the operator's own).
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u16)
        ^ std::process::id() as u16;
    let query = encode_query(id, host, qtype)?;
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(QUERY_TIMEOUT))
        .map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    sock.send(&query).map_err(|e| e.to_string())?;
    let mut buf = [0u8; MAX_ANSWER];
    loop {
        let n = sock.recv(&mut buf).map_err(|e| e.to_string())?;
        match decode_answer(&buf[..n], id, qtype) {
            // Another query's late answer: keep waiting for ours.
            Err(Mismatch::Id) => continue,
            Err(Mismatch::Bad(e)) => return Err(e),
            Ok(ips) => return Ok(ips),
        }
    }
}

fn encode_query(id: u16, host: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(18 + host.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // recursion desired
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in host.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{host:?} is not a host name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // class IN
    Ok(q)
}

enum Mismatch {
    Id,
    Bad(String),
}

/// The addresses of type `qtype` in an answer to query `id`.
fn decode_answer(m: &[u8], id: u16, qtype: u16) -> Result<Vec<IpAddr>, Mismatch> {
    let bad = |s: &str| Mismatch::Bad(s.to_string());
    let u16_at = |i: usize| -> Result<u16, Mismatch> {
        m.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("truncated answer"))
    };
    if u16_at(0)? != id {
        return Err(Mismatch::Id);
    }
    let flags = u16_at(2)?;
    if flags & 0x8000 == 0 {
        return Err(bad("not an answer"));
    }
    match flags & 0x000f {
        0 => {}
        3 => return Ok(Vec::new()), // no such name
        rcode => return Err(Mismatch::Bad(format!("DNS error code {rcode}"))),
    }
    let questions = u16_at(4)? as usize;
    let answers = u16_at(6)? as usize;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(m, at).ok_or_else(|| bad("malformed question"))? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(m, at).ok_or_else(|| bad("malformed answer"))?;
        let rtype = u16_at(at)?;
        let len = u16_at(at + 8)? as usize;
        let data = m
            .get(at + 10..at + 10 + len)
            .ok_or_else(|| bad("truncated record"))?;
        match (rtype, len) {
            (TYPE_A, 4) if qtype == TYPE_A => {
                out.push(IpAddr::from([data[0], data[1], data[2], data[3]]))
            }
            (TYPE_AAAA, 16) if qtype == TYPE_AAAA => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                out.push(IpAddr::from(b));
            }
            _ => {} // CNAMEs and others: the resolver follows them for us
        }
        at += 10 + len;
    }
    Ok(out)
}

/// The offset after a (possibly compressed) name at `at`.
fn skip_name(m: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *m.get(at)? as usize;
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        if len == 0 {
            return Some(at + 1);
        }
        at += 1 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot DNS server answering `ips` for any A question.
    fn server(ips: Vec<[u8; 4]>) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let q = &buf[..n];
                let qtype = u16::from_be_bytes([q[n - 4], q[n - 3]]);
                let mut r = q.to_vec();
                r[2] = 0x81;
                r[3] = 0x80;
                let count = if qtype == TYPE_A { ips.len() } else { 0 };
                r[6..8].copy_from_slice(&(count as u16).to_be_bytes());
                if qtype == TYPE_A {
                    for ip in &ips {
                        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                        r.extend_from_slice(ip);
                    }
                }
                let _ = s.send_to(&r, from);
            }
        });
        addr
    }

    #[test]
    fn asks_the_configured_server_for_every_address() {
        let dns = server(vec![[127, 0, 0, 2], [127, 0, 0, 1]]);
        let got = resolve("svc.test", 80, &[dns]).unwrap();
        assert_eq!(
            got,
            [
                "127.0.0.1:80".parse::<SocketAddr>().unwrap(),
                "127.0.0.2:80".parse().unwrap()
            ]
        );
        assert_eq!(
            resolve("10.1.2.3", 8, &[]).unwrap(),
            ["10.1.2.3:8".parse::<SocketAddr>().unwrap()]
        );
        let empty = server(vec![]);
        assert!(resolve("svc.test", 80, &[empty]).is_err());
        assert!(resolve("localhost", 1, &[]).is_ok(), "the system resolver");
    }
}
