//! A minimal authoritative DNS server on 127.0.0.1 (UDP), std only: A records for one name
//! from a list the test changes while it runs (TTL 1), NODATA for other types of that name,
//! NXDOMAIN for any other name. It can be told to stop answering (queries are then read
//! and dropped, as from a dead server).

use super::*;
use std::net::{Ipv4Addr, UdpSocket};

pub struct DnsServer {
    pub addr: SocketAddr,
    name: String,
    records: Arc<Mutex<Vec<Ipv4Addr>>>,
    answering: Arc<AtomicBool>,
    /// Queries received (any type), answered or not.
    queries: Arc<AtomicUsize>,
    /// A (or ANY) queries for the name received.
    a_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serve `name` (e.g. `svc.test`) with A records `ips`.
    pub fn start(name: &str, ips: &[Ipv4Addr]) -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind dns server");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let records = Arc::new(Mutex::new(ips.to_vec()));
        let answering = Arc::new(AtomicBool::new(true));
        let queries = Arc::new(AtomicUsize::new(0));
        let a_queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let lname = name.trim_end_matches('.').to_ascii_lowercase();
        let (rec, ans, q, qa, st, n) = (
            records.clone(),
            answering.clone(),
            queries.clone(),
            a_queries.clone(),
            stop.clone(),
            lname.clone(),
        );
        let handle = thread::Builder::new()
            .name("dns-server".into())
            .spawn(move || {
                let mut buf = [0u8; 1500];
                while !st.load(Ordering::SeqCst) {
                    let Ok((len, peer)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    q.fetch_add(1, Ordering::SeqCst);
                    let Some(query) = parse_query(&buf[..len]) else {
                        continue;
                    };
                    let is_a = query.name == n && (query.qtype == 1 || query.qtype == 255);
                    if is_a {
                        qa.fetch_add(1, Ordering::SeqCst);
                    }
                    if !ans.load(Ordering::SeqCst) {
                        continue;
                    }
                    let ips = if is_a {
                        rec.lock().unwrap().clone()
                    } else {
                        Vec::new()
                    };
                    let rcode = if query.name == n { 0 } else { 3 };
                    let reply = build_reply(&buf[..len], &query, rcode, &ips);
                    let _ = sock.send_to(&reply, peer);
                }
            })
            .expect("spawn dns server");
        DnsServer {
            addr,
            name: lname,
            records,
            answering,
            queries,
            a_queries,
            stop,
            handle: Some(handle),
        }
    }

    /// Replace the A records.
    pub fn set(&self, ips: &[Ipv4Addr]) {
        *self.records.lock().unwrap() = ips.to_vec();
    }

    /// Answer queries (true) or silently drop them (false).
    pub fn set_answering(&self, on: bool) {
        self.answering.store(on, Ordering::SeqCst);
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    pub fn a_queries(&self) -> usize {
        self.a_queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Query {
    /// Lower case, no trailing dot.
    name: String,
    qtype: u16,
    /// End of the (first) question in the message.
    question_end: usize,
}

fn parse_query(m: &[u8]) -> Option<Query> {
    if m.len() < 12 || m[2] & 0x80 != 0 {
        return None; // too short, or a response
    }
    let qdcount = u16::from_be_bytes([m[4], m[5]]);
    if qdcount < 1 {
        return None;
    }
    let mut p = 12;
    let mut labels = Vec::new();
    loop {
        let len = *m.get(p)? as usize;
        p += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None; // no compression in questions
        }
        let label = m.get(p..p + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        p += len;
    }
    let qtype = u16::from_be_bytes([*m.get(p)?, *m.get(p + 1)?]);
    m.get(p + 3)?;
    Some(Query {
        name: labels.join("."),
        qtype,
        question_end: p + 4,
    })
}

fn build_reply(m: &[u8], q: &Query, rcode: u8, ips: &[Ipv4Addr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 16 * ips.len());
    out.extend_from_slice(&m[0..2]); // id
                                     // QR, the query's opcode, AA, the query's RD; RA and the rcode.
    out.push(0x80 | (m[2] & 0x78) | 0x04 | (m[2] & 0x01));
    out.push(0x80 | (rcode & 0x0f));
    out.extend_from_slice(&1u16.to_be_bytes()); // qdcount
    out.extend_from_slice(&(ips.len() as u16).to_be_bytes()); // ancount
    out.extend_from_slice(&0u16.to_be_bytes()); // nscount
    out.extend_from_slice(&0u16.to_be_bytes()); // arcount
    out.extend_from_slice(&m[12..q.question_end]);
    for ip in ips {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name in the question
        out.extend_from_slice(&1u16.to_be_bytes()); // A
        out.extend_from_slice(&1u16.to_be_bytes()); // IN
        out.extend_from_slice(&1u32.to_be_bytes()); // TTL 1 s
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// Ask `server` for the A records of `name` (used to check the test server itself).
pub fn dns_lookup_a(server: SocketAddr, name: &str) -> io::Result<Vec<Ipv4Addr>> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, server)?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf)?;
    let m = &buf[..n];
    let an = u16::from_be_bytes([m[6], m[7]]) as usize;
    let mut p = q.len();
    let mut out = Vec::new();
    for _ in 0..an {
        // name (pointer), type, class, ttl, rdlength, rdata
        p += 2 + 2 + 2 + 4;
        let rdlen = u16::from_be_bytes([m[p], m[p + 1]]) as usize;
        p += 2;
        if rdlen == 4 {
            out.push(Ipv4Addr::new(m[p], m[p + 1], m[p + 2], m[p + 3]));
        }
        p += rdlen;
    }
    Ok(out)
}
