//! The certificate resolver of the HTTPS listeners: at each handshake, the running
//! snapshot's certificate for the listener and the client's SNI.

use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use std::sync::Arc;

/// The certificate resolver of one HTTPS listener: the running config's set for its
/// address, read at each handshake.
pub struct SniResolver {
    config: Arc<ArcSwap<Snapshot>>,
    listen: String,
}

impl SniResolver {
    /// The resolver of the listener on `listen`.
    pub fn new(config: Arc<ArcSwap<Snapshot>>, listen: &str) -> Self {
        SniResolver {
            config,
            listen: listen.to_string(),
        }
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("listen", &self.listen)
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snap = self.config.load();
        let set = snap.certs.get(&self.listen)?;
        Some(set.choose(hello.server_name()))
    }
}
