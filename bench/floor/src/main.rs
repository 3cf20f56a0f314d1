//! Bare Pingora proxy: every request goes to one fixed upstream over plain HTTP/1.1.
//!
//! Usage: floor <listen ip:port> <upstream ip:port> [state dir]
//!
//! One worker thread, a 256-connection upstream keepalive pool (tollgate's default), pid
//! file and upgrade socket in the state dir (default /tmp) so it never collides with a
//! tollgate or another Pingora process.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service_with_name, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;

struct Floor {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: {} <listen ip:port> <upstream ip:port> [state dir]", args[0]);
        std::process::exit(2);
    }
    let (listen, upstream) = (args[1].clone(), args[2].clone());
    let dir = args.get(3).cloned().unwrap_or_else(|| "/tmp".to_string());

    let conf = ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: 256,
        pid_file: format!("{dir}/floor.pid"),
        upgrade_sock: format!("{dir}/floor_upgrade.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service_with_name(&server.configuration, Floor { upstream }, "floor");
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    eprintln!("floor: listening on {listen}, proxying to {}", args[2]);
    server.run_forever();
}
