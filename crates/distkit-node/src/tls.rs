//! TLS for the node: its listener's certificate, the CA it verifies peers against, and
//! `distkit-node certs`, which makes both for a cluster (like `consul tls`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use distkit_core::Error;
use distkit_core::tls::{PeerTls, provider, rustls};

/// A node's TLS: the listener's certificate and key, and the CA its peer client trusts.
#[derive(Clone)]
pub struct NodeTls {
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) peers: Option<PeerTls>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Reads the listener's certificate chain and key (PEM) and, when given, the CA that
    /// peers' certificates must be signed by.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the file that cannot be read, holds no certificate or
    /// key, or whose key does not match the certificate.
    pub fn load(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<Self, Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |path: &Path, why: String| {
            Error::invalid_input("tls", format!("{}: {why}", path.display()))
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(bad(cert, "no CERTIFICATE block in it".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| bad(key, format!("does not fit the certificate: {e}")))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            server: Arc::new(server),
            peers: ca.map(PeerTls::from_ca_file).transpose()?,
        })
    }
}

/// Makes a certificate authority and one certificate per node in `dir` (`ca.pem`,
/// `ca-key.pem`, `NODE.pem`, `NODE-key.pem`), each node's valid for the names and addresses
/// in `sans`. Keys are written readable by their owner only. Refuses to overwrite a CA.
///
/// # Errors
///
/// [`Error::InvalidInput`] for no node, a node name that is not a plain file name, an
/// existing CA in `dir`; [`Error::Storage`] when a file cannot be written.
pub fn generate(dir: &Path, nodes: &[String], sans: &[String]) -> Result<Vec<PathBuf>, Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    if nodes.is_empty() {
        return Err(Error::invalid_input("nodes", "name at least one node"));
    }
    let mut names = std::collections::HashSet::new();
    for n in nodes {
        distkit_core::NodeId::new(n.as_str())?;
        if n.contains(['/', '\\'])
            || n.starts_with('.')
            || n == "ca"
            || n.ends_with("-key")
            || n.len() > 64
            || !n.is_ascii()
        {
            return Err(Error::invalid_input(
                "nodes",
                format!(
                    "{n:?} cannot name a certificate file (ASCII, at most 64 bytes, not `ca`, \
                     not ending in `-key`, no `/` or leading `.`)"
                ),
            ));
        }
        if !names.insert(n.as_str()) {
            return Err(Error::invalid_input(
                "nodes",
                format!("{n:?} is named twice"),
            ));
        }
    }
    for san in sans {
        let dns_name = !san.is_empty()
            && san.len() <= 253
            && san.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if san.parse::<IpAddr>().is_err() && !dns_name {
            return Err(Error::invalid_input(
                "san",
                format!("{san:?} is neither an IP address nor a DNS name"),
            ));
        }
    }
    let crypto = |e: rcgen::Error| Error::invalid_input("certificate", e.to_string());
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() {
        return Err(Error::invalid_input(
            "certs dir",
            format!(
                "{} exists: a new CA would not be trusted by the nodes that use it; use another directory",
                ca_path.display()
            ),
        ));
    }
    let (year, month, day) = today();
    let valid = |years: i32| {
        (
            rcgen::date_time_ymd(year, month, day) - std::time::Duration::from_secs(86_400),
            rcgen::date_time_ymd(year + years, month, day.min(28)),
        )
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // A name of its own, so that clients holding an old and a new CA during a rotation can
    // tell them apart.
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("distkit cluster CA {:08x}", rand::random::<u32>()),
    );
    (ca.not_before, ca.not_after) = valid(10);
    let ca_key = KeyPair::generate().map_err(crypto)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(crypto)?;
    let issuer = Issuer::new(ca, &ca_key);
    // Everything is made before anything is written: a refusal leaves no half-made CA.
    let mut files = vec![
        (ca_path, ca_cert.pem(), false),
        (dir.join("ca-key.pem"), ca_key.serialize_pem(), true),
    ];
    for node in nodes {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = valid(2);
        for san in sans {
            params.subject_alt_names.push(match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into().map_err(crypto)?),
            });
        }
        let key = KeyPair::generate().map_err(crypto)?;
        let cert = params.signed_by(&key, &issuer).map_err(crypto)?;
        files.push((dir.join(format!("{node}.pem")), cert.pem(), false));
        files.push((
            dir.join(format!("{node}-key.pem")),
            key.serialize_pem(),
            true,
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| storage(dir, e))?;
    let mut written = Vec::new();
    for (path, text, secret) in &files {
        write(path, text.as_bytes(), *secret, &mut written)?;
    }
    Ok(written)
}

fn storage(path: &Path, e: std::io::Error) -> Error {
    Error::Storage {
        path: path.display().to_string(),
        reason: format!("cannot write: {e}"),
        source: Some(Arc::new(e)),
    }
}

/// Today's date (UTC) as year, month, day: days since 1970 to the civil calendar.
fn today() -> (i32, u8, u8) {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(2026),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

fn write(path: &Path, bytes: &[u8], secret: bool, written: &mut Vec<PathBuf>) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| storage(path, e))?;
    file.write_all(bytes).map_err(|e| storage(path, e))?;
    written.push(path.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_and_refuse_misuse() {
        let dir = std::env::temp_dir().join(format!("distkit-node-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let files = generate(&dir, &["node-1".into(), "node-2".into()], &sans).unwrap();
        assert_eq!(files.len(), 6);
        let tls = NodeTls::load(
            &dir.join("node-1.pem"),
            &dir.join("node-1-key.pem"),
            Some(&dir.join("ca.pem")),
        )
        .unwrap();
        assert!(tls.peers.is_some());
        // A key that is not the certificate's, a missing file, a CA twice, a bad node name.
        assert!(NodeTls::load(&dir.join("node-1.pem"), &dir.join("node-2-key.pem"), None).is_err());
        assert!(NodeTls::load(&dir.join("nope.pem"), &dir.join("node-1-key.pem"), None).is_err());
        assert!(generate(&dir, &["node-3".into()], &sans).is_err());
        let other = dir.join("other");
        for bad in ["../x", "ca", ".hidden", ""] {
            assert!(generate(&other, &[bad.into()], &sans).is_err(), "{bad:?}");
        }
        assert!(generate(&other, &[], &sans).is_err());
        for (nodes, sans) in [
            (vec!["n".to_owned(), "n".to_owned()], sans.clone()),
            (vec!["x-key".to_owned()], sans.clone()),
            (vec!["n".to_owned()], vec![String::new()]),
            (vec!["n".to_owned()], vec!["a b".to_owned()]),
            (vec!["n".to_owned()], vec!["../etc".to_owned()]),
            (vec!["n".to_owned()], vec!["ünïcode.example".to_owned()]),
        ] {
            assert!(
                generate(&other, &nodes, &sans).is_err(),
                "{nodes:?} {sans:?}"
            );
            assert!(!other.exists(), "a refusal writes nothing");
        }
        let (y, m, d) = today();
        assert!((2024..2200).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("node-1-key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "keys are for their owner only");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
