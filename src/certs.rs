//! TLS certificates of the HTTPS listeners: one default per listener and more chosen by SNI
//! (`[[server.tls.sni]]`), loaded with the config so a reload (SIGHUP, or a change of the
//! config or of a certificate file) swaps them without dropping a connection. The listeners
//! pick from them at each handshake (`crate::sni`).

use crate::config::schema::TlsListenerSection;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::CryptoProvider;
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_plugins::ConfigError;

/// The certificates of one listener.
#[derive(Debug)]
pub struct CertSet {
    default: Arc<CertifiedKey>,
    /// Lower-case exact host → certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".suffix", certificate)` for `*.suffix` hosts, longest first.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

impl CertSet {
    /// The certificate for a handshake naming `sni` (the default when none matches).
    pub fn choose(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map_or_else(|| self.default.clone(), |(_, c)| c.clone())
    }

    /// Load a listener's certificates; errors relative to `at` (`server.tls[i]`).
    pub fn load(t: &TlsListenerSection, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let before = errors.len();
        let default = load_pair(&t.cert, &t.key, at, errors);
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for (i, s) in t.sni.iter().enumerate() {
            let sat = format!("{at}.sni[{i}]");
            if s.hosts.is_empty() {
                errors.push(ConfigError::new(
                    format!("{sat}.hosts"),
                    "name at least one host",
                ));
            }
            let Some(pair) = load_pair(&s.cert, &s.key, &sat, errors) else {
                continue;
            };
            for (j, h) in s.hosts.iter().enumerate() {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix("*.") {
                    Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                        wildcard.push((format!(".{suffix}"), pair.clone()))
                    }
                    _ if h.is_empty() || h.contains('*') => errors.push(ConfigError::new(
                        format!("{sat}.hosts[{j}]"),
                        "a host is \"api.example.com\" or \"*.example.com\"",
                    )),
                    _ => {
                        exact.insert(h, pair.clone());
                    }
                }
            }
        }
        wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        match default {
            Some(default) if errors.len() == before => Some(CertSet {
                default,
                exact,
                wildcard,
            }),
            _ => None,
        }
    }
}

/// A certificate chain and its key from PEM files, checked to belong together.
fn load_pair(
    cert: &str,
    key: &str,
    at: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<CertifiedKey>> {
    let loaded = match pingora::tls::load_certs_and_key_files(cert, key) {
        Ok(Some(pair)) => pair,
        Ok(None) => {
            errors.push(ConfigError::new(
                format!("{at}.cert"),
                format!("{cert:?} / {key:?}: no certificate or no private key found"),
            ));
            return None;
        }
        Err(e) => {
            errors.push(ConfigError::new(
                format!("{at}.cert"),
                format!("cannot read {cert:?} / {key:?}: {e}"),
            ));
            return None;
        }
    };
    let (chain, private) = loaded;
    pingora::tls::install_default_crypto_provider();
    let Some(provider) = CryptoProvider::get_default() else {
        errors.push(ConfigError::new(at, "no TLS crypto provider"));
        return None;
    };
    let chain = chain.into_iter().map(|c| c.into_owned()).collect();
    match CertifiedKey::from_der(chain, private.clone_key(), provider) {
        Ok(k) => Some(Arc::new(k)),
        Err(e) => {
            errors.push(ConfigError::new(
                format!("{at}.key"),
                format!("{key:?} does not fit {cert:?}: {e}"),
            ));
            None
        }
    }
}
