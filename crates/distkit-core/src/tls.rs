//! TLS between peers: what a peer client trusts.
//!
//! A distkit cluster that runs over TLS has its own certificate authority: every node's
//! certificate is signed by it, and every node's peer client trusts that CA and nothing else
//! (not the platform's store: a certificate some public CA issued for the same name must not
//! pass as a peer). [`PeerTls`] holds that trust, built once from the CA's PEM file, and the
//! election's and the cache's peer clients are built from it.

use std::path::Path;
use std::sync::Arc;

use crate::Error;

/// The rustls this module is built on, for code that needs its types (the same version).
pub use rustls;

/// The certificate authority a peer client verifies its peers' certificates against.
///
/// ```no_run
/// use distkit_core::tls::PeerTls;
///
/// let tls = PeerTls::from_ca_file("certs/ca.pem")?;
/// // HttpTransport::with_tls(peers, token, timeout, &tls), DistributedCache::builder(..).tls(tls)
/// # Ok::<(), distkit_core::Error>(())
/// ```
#[derive(Clone)]
pub struct PeerTls {
    config: Arc<rustls::ClientConfig>,
    roots: usize,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Trusts the certificates in `pem` (one or more `CERTIFICATE` blocks) as the only roots.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `pem` holds no certificate, a malformed one, or one that
    /// cannot be a trust anchor.
    pub fn from_ca_pem(pem: &[u8]) -> Result<Self, Error> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let bad = |why: String| Error::invalid_input("tls ca", why);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| bad(format!("malformed PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("no CERTIFICATE block in it".into()));
        }
        let count = roots.len();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            roots: count,
        })
    }

    /// Reads the CA's PEM file and trusts it, as [`PeerTls::from_ca_pem`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the file when it cannot be read or holds no usable CA.
    pub fn from_ca_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| Error::invalid_input("tls ca", format!("{}: {e}", path.display())))?;
        Self::from_ca_pem(&pem).map_err(|e| match e {
            Error::InvalidInput { what, reason } => {
                Error::invalid_input(what, format!("{}: {reason}", path.display()))
            }
            other => other,
        })
    }

    /// The rustls client configuration to build an HTTP client with (reqwest's
    /// `tls_backend_preconfigured`).
    #[must_use]
    pub fn client_config(&self) -> rustls::ClientConfig {
        (*self.config).clone()
    }
}

/// The crypto provider every distkit TLS configuration uses: aws-lc-rs, the one reqwest and
/// rustls default to, so a process never needs another installed.
#[must_use]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_ca() {
        for bad in [
            &b""[..],
            b"not pem at all",
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let err = PeerTls::from_ca_pem(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        }
        let err = PeerTls::from_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
