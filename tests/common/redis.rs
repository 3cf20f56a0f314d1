//! A real `redis-server` for the tests of Redis-backed features, and a minimal RESP client to
//! look at what they stored.

use super::{free_port, wait_until, IO_TIMEOUT};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of the test's own on a free port, without persistence; killed on drop.
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
            "redis-server did not start on {port}"
        );
        Redis {
            child: Some(child),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command over RESP.
    pub fn cmd(&self, args: &[&str]) -> Resp {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect redis");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(out.as_bytes()).unwrap();
        read_resp(&mut BufReader::new(s))
    }

    /// Every key (SCAN).
    pub fn keys(&self) -> Vec<String> {
        let mut cursor = "0".to_string();
        let mut keys = Vec::new();
        loop {
            let Resp::Array(parts) = self.cmd(&["SCAN", &cursor, "COUNT", "1000"]) else {
                panic!("SCAN: not an array");
            };
            let [Resp::Bulk(Some(next)), Resp::Array(batch)] = parts.as_slice() else {
                panic!("SCAN: bad reply {parts:?}");
            };
            for k in batch {
                if let Resp::Bulk(Some(k)) = k {
                    keys.push(String::from_utf8_lossy(k).into_owned());
                }
            }
            cursor = String::from_utf8_lossy(next).into_owned();
            if cursor == "0" {
                return keys;
            }
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A RESP reply (the strings are only read in failure messages).
#[derive(Debug)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

pub fn read_resp<R: BufRead>(r: &mut R) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("read redis reply");
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(rest.parse().unwrap()),
        "$" => {
            let n: i64 = rest.parse().unwrap();
            if n < 0 {
                return Resp::Bulk(None);
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf).unwrap();
            buf.truncate(n as usize);
            Resp::Bulk(Some(buf))
        }
        "*" => {
            let n: i64 = rest.parse().unwrap();
            Resp::Array((0..n.max(0)).map(|_| read_resp(r)).collect())
        }
        _ => panic!("bad redis reply {line:?}"),
    }
}
