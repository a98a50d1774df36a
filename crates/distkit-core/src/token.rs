//! The shared secret cluster members present to each other.

use std::fmt;

use crate::Error;

/// The cluster token: a shared secret that peers send as `Authorization: Bearer <token>` on
/// their internal routes. Compared in constant time; `Debug` never prints it.
///
/// ```
/// use distkit_core::ClusterToken;
///
/// let t = ClusterToken::new("s3cret")?;
/// assert!(t.matches_authorization(Some("Bearer s3cret")));
/// assert!(!t.matches_authorization(Some("Bearer s3cre")));
/// assert!(!t.matches_authorization(None));
/// assert_eq!(format!("{t:?}"), "ClusterToken(..)");
/// # Ok::<(), distkit_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterToken(String);

impl ClusterToken {
    /// Checks and wraps a token: non-empty, visible ASCII only (it travels in a header).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty token or one with spaces, control or non-ASCII
    /// characters.
    pub fn new(token: impl Into<String>) -> Result<Self, Error> {
        let token = token.into();
        if token.is_empty() {
            return Err(Error::invalid_input("cluster token", "it is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid_input(
                "cluster token",
                "it may hold only visible ASCII characters (no spaces)",
            ));
        }
        Ok(Self(token))
    }

    /// The token, to send as a bearer credential.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`, compared in constant
    /// time so response timing does not reveal the token.
    #[must_use]
    pub fn matches_authorization(&self, header: Option<&str>) -> bool {
        // The scheme is case-insensitive (RFC 9110, 11.1): `bearer` and `BEARER` count.
        let Some(given) = header.and_then(|h| {
            let (scheme, rest) = h.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case("Bearer ").then_some(rest)
        }) else {
            return false;
        };
        let (a, b) = (given.as_bytes(), self.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterToken(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tokens_are_refused() {
        for bad in ["", "with space", "tab\t", "é", "nul\0"] {
            assert!(ClusterToken::new(bad).is_err(), "{bad:?}");
        }
        let t = ClusterToken::new("abc").unwrap();
        assert!(
            !t.matches_authorization(Some("abc")),
            "the Bearer scheme is required"
        );
        assert!(!t.matches_authorization(Some("Bearer abcd")));
        assert!(!t.matches_authorization(Some("Basic abc")));
        assert!(!t.matches_authorization(Some("Bearer")));
        assert!(!t.matches_authorization(Some("Bearerxabc")));
        // The scheme is case-insensitive; the token is not.
        assert!(t.matches_authorization(Some("bearer abc")));
        assert!(t.matches_authorization(Some("BEARER abc")));
        assert!(!t.matches_authorization(Some("Bearer ABC")));
        // Multi-byte characters where the scheme would end: no panic.
        assert!(!t.matches_authorization(Some("Beaŕer abc")));
    }
}
