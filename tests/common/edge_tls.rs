//! TLS helpers for the edge tests, all through the `openssl` command line: self-signed
//! certificates, the certificate a handshake with a given SNI gets, and a long-lived TLS
//! client connection (`openssl s_client -quiet`) to send several requests on.

use super::*;
use std::process::{ChildStdin, ChildStdout};
use std::sync::mpsc::{self, Receiver};

/// A self-signed certificate for `cn` (also its DNS SAN), subject `/CN=<cn>/O=<org>`,
/// written to `dir/<stem>.crt` and `dir/<stem>.key`. Returns (cert, key) paths.
pub fn make_cert(dir: &Path, stem: &str, cn: &str, org: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &format!("/CN={cn}/O={org}")])
        .args(["-addext", &format!("subjectAltName=DNS:{cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl could not make a certificate for {cn}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Subject of the certificate the server at `127.0.0.1:port` presents for SNI `sni` (`None`:
/// no SNI), spaces removed: e.g. `subject=CN=a.test,O=gen1`. `Err` with openssl's output when
/// the handshake or the parse failed.
pub fn tls_subject(port: u16, sni: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("timeout");
    cmd.args(["5", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"));
    match sni {
        Some(s) => cmd.args(["-servername", s]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run openssl s_client");
    let pem = out.stdout;
    if !String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE") {
        return Err(format!(
            "no certificate from 127.0.0.1:{port} (sni {sni:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    x.stdin.take().unwrap().write_all(&pem).unwrap();
    let o = x.wait_with_output().unwrap();
    let subject: String = String::from_utf8_lossy(&o.stdout)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if subject.starts_with("subject=") {
        Ok(subject)
    } else {
        Err(format!(
            "openssl x509 could not read the certificate: {}",
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// One TLS connection held open by an `openssl s_client -quiet` child: write requests on its
/// stdin, read responses (framed by `Content-Length`) from its stdout.
pub struct TlsConn {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    eof: bool,
}

impl TlsConn {
    pub fn connect(port: u16, sni: &str) -> TlsConn {
        // Not under `timeout`: killing the child on drop must kill openssl itself.
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-servername", sni])
            .arg("-connect")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_client");
        let stdin = child.stdin.take();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut stdout = stdout;
            let mut b = [0u8; 16384];
            loop {
                match stdout.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(b[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        TlsConn {
            child,
            stdin,
            rx,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Write `bytes`, then read one response (it must have `Content-Length`) within
    /// `timeout`.
    pub fn request(&mut self, bytes: &[u8], timeout: Duration) -> Result<Response, String> {
        if let Some(s) = self.stdin.as_mut() {
            s.write_all(bytes)
                .and_then(|_| s.flush())
                .map_err(|e| format!("write to s_client: {e}"))?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let cl = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let total = end + 4 + cl;
                if self.buf.len() >= total {
                    let one: Vec<u8> = self.buf.drain(..total).collect();
                    return parse_response_bytes(&one);
                }
            }
            if self.eof {
                return Err(format!(
                    "TLS connection closed; got {:?}",
                    escape_bytes(&self.buf)
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no response within {timeout:?}; got {:?}",
                    escape_bytes(&self.buf)
                ));
            }
            match self.rx.recv_timeout(left) {
                Ok(b) => self.buf.extend_from_slice(&b),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => self.eof = true,
            }
        }
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
