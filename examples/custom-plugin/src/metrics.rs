//! The plugin's own metric, registered once into the gateway's `/metrics`.

use prometheus::{IntCounterVec, Opts};
use std::sync::LazyLock;

/// `tollgate_hmac_signature_verified_total{key_id}`: requests let through, by the key that
/// signed them. Key ids come from the config, so the label set is bounded.
pub static VERIFIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = IntCounterVec::new(
        Opts::new(
            "tollgate_hmac_signature_verified_total",
            "Requests with a valid HMAC signature, by key id",
        ),
        &["key_id"],
    );
    match counter {
        Ok(c) => {
            // Registered once per process; a failure only means the metric is not exported.
            if let Err(e) = tollgate_plugins::metrics::register(Box::new(c.clone())) {
                log::warn!("hmac_signature metric not exported: {e}");
            }
            c
        }
        // The name and labels are constants: this only fails if the code here is wrong.
        Err(e) => panic!("invalid metric: {e}"),
    }
});
