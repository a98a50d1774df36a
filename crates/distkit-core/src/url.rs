//! The base URL of a peer, validated once.

use std::fmt;

use crate::Error;

/// A peer's base URL: `http://host:port` or `https://host:port`, nothing more. The host is a name (letters, digits,
/// `-` and `.`), an IPv4 address or a bracketed IPv6 address; the port is explicit and in
/// `1..=65535`. No path, query, credentials, whitespace or control characters: what a peer
/// is addressed by must not be open to interpretation.
///
/// ```
/// use distkit_core::PeerUrl;
///
/// assert_eq!(PeerUrl::parse("http://127.0.0.1:7001/")?.as_str(), "http://127.0.0.1:7001");
/// assert!(PeerUrl::parse("http://node-2.internal:7002").is_ok());
/// assert!(PeerUrl::parse("http://[::1]:7003").is_ok());
/// assert!(PeerUrl::parse("https://node-3.internal:7003")?.is_tls());
/// for bad in ["http://h", "http://h:0", "http://h:99999", "http://h:1/path", "http://u:p@h:1",
///             "ftp://h:1", "http://h:1\n", "http:// h:1", "http://h\u{202e}:1"] {
///     assert!(PeerUrl::parse(bad).is_err(), "{bad:?}");
/// }
/// # Ok::<(), distkit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerUrl(String);

/// The longest host accepted (DNS's limit).
const MAX_HOST: usize = 253;

impl PeerUrl {
    /// Validates `url` (a trailing `/` is dropped).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] saying what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::invalid_input(
                "peer url",
                format!(
                    "{:?} {why}; expected http://host:port or https://host:port",
                    truncate(url)
                ),
            )
        };
        let trimmed = url.strip_suffix('/').unwrap_or(url);
        let Some(rest) = trimmed
            .strip_prefix("http://")
            .or_else(|| trimmed.strip_prefix("https://"))
        else {
            return Err(bad("does not start with http:// or https://"));
        };
        let port = if let Some(v6) = rest.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return Err(bad("has an unclosed IPv6 bracket"));
            };
            if addr.is_empty()
                || !addr
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            {
                return Err(bad("has an invalid IPv6 address"));
            }
            let Some(port) = after.strip_prefix(':') else {
                return Err(bad("has no port"));
            };
            port
        } else {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return Err(bad("has no port"));
            };
            if host.is_empty() || host.len() > MAX_HOST {
                return Err(bad("has an empty or overlong host"));
            }
            if !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(bad(
                    "has a host with characters other than letters, digits, - and .",
                ));
            }
            port
        };
        if port.is_empty() || port.len() > 5 || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad(
                "has a port that is not a number (and nothing may follow it)",
            ));
        }
        match port.parse::<u32>() {
            Ok(1..=65535) => Ok(Self(trimmed.to_owned())),
            _ => Err(bad("has a port outside 1..=65535")),
        }
    }

    /// Whether the peer is reached over TLS (`https://`).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// Checks that this URL's scheme fits a client that does (`tls`) or does not speak TLS
    /// to its peers: with TLS every peer must be `https://` (a plaintext peer would be a
    /// downgrade), without it none may be.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the URL and what to change.
    pub fn check_scheme(&self, tls: bool) -> Result<(), Error> {
        match (tls, self.is_tls()) {
            (true, false) => Err(Error::invalid_input(
                "peer url",
                format!(
                    "{} is plaintext, but peers are reached over TLS: every peer must be https://",
                    self.0
                ),
            )),
            (false, true) => Err(Error::invalid_input(
                "peer url",
                format!(
                    "{} is https, but peers are reached in plaintext: configure TLS for peers \
                     (a CA to verify them against)",
                    self.0
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The URL, without a trailing `/`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// At most 80 characters of `s`, for messages about input that may be huge.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
