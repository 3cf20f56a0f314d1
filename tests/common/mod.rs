//! Test harness shared by the integration test binaries: a gateway process, echo upstreams,
//! a tiny HTTP/1.1 client and a Prometheus text parser. Standard library only (plus
//! `serde_json` for the echo bodies).
//!
//! Every network read has a timeout, so a gateway bug fails a test instead of hanging the
//! suite.

// Each test binary uses its own part of the harness.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use serde_json::Value as Json;

/// Timeout of every client read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a gateway gets to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Path of the gateway binary built by cargo for these tests: `tollgate`, or the custom
/// binary of `examples/custom-plugin` when its tests include this harness.
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_tollgate") {
    Some(bin) => bin,
    None => match option_env!("CARGO_BIN_EXE_tollgate-hmac") {
        Some(bin) => bin,
        None => panic!("no gateway binary in this package"),
    },
};

mod client;
mod gateway;
mod h2raw;
mod openai;
mod prom;
mod raw_upstream;
mod redis;
mod upstream;
mod util;
mod wire;

pub use client::*;
pub use gateway::*;
pub use h2raw::*;
pub use openai::*;
pub use prom::*;
pub use raw_upstream::*;
pub use redis::*;
pub use upstream::*;
pub use util::*;
pub use wire::*;

// Harness of tests/edges.rs.
mod edge_dns;
mod edge_origin;
mod edge_proc;
mod edge_tls;
pub use edge_dns::*;
pub use edge_origin::*;
pub use edge_proc::*;
pub use edge_tls::*;
