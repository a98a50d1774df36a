//! Identifiers and ordered values shared by every component.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The largest [`NodeId`] in bytes.
pub const MAX_NODE_ID_LEN: usize = 255;

/// The name of one member of a cluster (a cache peer, an election voter, a ring node).
///
/// A `NodeId` is valid UTF-8, non-empty, at most [`MAX_NODE_ID_LEN`] bytes long and contains no
/// control characters (so it is safe to print in a log line, an HTTP header or a URL segment
/// once percent-encoded). Every way of building one checks this: [`NodeId::new`], [`FromStr`],
/// [`TryFrom<String>`] and serde deserialization all reject invalid input with
/// [`Error::InvalidInput`].
///
/// Cloning is cheap (a reference count), so ids can be copied freely into rings and messages.
///
/// ```
/// use distkit_core::NodeId;
///
/// let id: NodeId = "gateway-eu-1".parse()?;
/// assert_eq!(id.as_str(), "gateway-eu-1");
/// assert!("".parse::<NodeId>().is_err());
/// assert!("bad\nid".parse::<NodeId>().is_err());
/// # Ok::<(), distkit_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Checks `id` and wraps it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when `id` is empty, longer than [`MAX_NODE_ID_LEN`] bytes, or
    /// contains a control character (NUL, newline, escape, ...).
    pub fn new(id: impl AsRef<str>) -> Result<Self, Error> {
        let id = id.as_ref();
        Self::validate(id)?;
        Ok(Self(Arc::from(id)))
    }

    fn validate(id: &str) -> Result<(), Error> {
        if id.is_empty() {
            return Err(Error::invalid_input("node id", "it is empty"));
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(Error::invalid_input(
                "node id",
                format!(
                    "it is {} bytes long, the limit is {MAX_NODE_ID_LEN}",
                    id.len()
                ),
            ));
        }
        if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
            return Err(Error::invalid_input(
                "node id",
                format!("it contains the control character {c:?} at byte {at}"),
            ));
        }
        Ok(())
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:?})", &*self.0)
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::validate(&s)?;
        Ok(Self(Arc::from(s)))
    }
}

impl TryFrom<&str> for NodeId {
    type Error = Error;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0.to_string()
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A number that grows with every grant of a lock, so a protected resource can refuse a writer
/// whose lease has already passed to someone else (Kleppmann's fencing token).
///
/// Tokens for one lock name are strictly increasing across grants: a resource that remembers the
/// largest token it has accepted and refuses any smaller one never accepts a write from a holder
/// that lost the lock to a later holder. Tokens of different lock names are unrelated.
///
/// ```
/// use distkit_core::FencingToken;
///
/// let old = FencingToken::new(41);
/// let new = FencingToken::new(42);
/// assert!(old < new);
/// assert_eq!(new.to_string(), "42");
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token value.
    #[must_use]
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw value.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for FencingToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u64>()
            .map(Self)
            .map_err(|e| Error::invalid_input("fencing token", e.to_string()))
    }
}

/// An election term (Raft's `currentTerm`): a logical clock that only moves forward.
///
/// A term has at most one leader. Because terms only grow, the term in which a node leads also
/// serves as a fencing token for the work it does as leader (see [`Term::as_fencing_token`]).
///
/// # The rule for extreme terms
///
/// Terms live in `0..=Term::MAX`, where [`Term::MAX`] is `2^63 - 1` (so a term also fits the
/// signed 64-bit columns that protected stores keep fencing tokens in). A term never
/// saturates: [`Term::checked_next`] returns `None` at the top, a node never campaigns for a
/// term it cannot raise, and a message carrying a term above [`Term::MAX`] is refused as a
/// protocol error. A real cluster needs hundreds of millions of years of elections to get
/// near the top; only a peer holding the cluster token can send one there, and safety (one
/// leader per term, one vote per term) holds even then.
///
/// ```
/// use distkit_core::Term;
///
/// let t = Term::ZERO.checked_next().expect("far from the top");
/// assert_eq!(t, Term::new(1));
/// assert!(t > Term::ZERO);
/// assert_eq!(Term::MAX.checked_next(), None);
/// assert!(!Term::new(u64::MAX).is_valid());
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(u64);

impl Term {
    /// The term every node starts in.
    pub const ZERO: Self = Self(0);

    /// The largest valid term, `2^63 - 1`. See [the rule for extreme terms](Term#the-rule-for-extreme-terms).
    pub const MAX: Self = Self(i64::MAX.unsigned_abs());

    /// Wraps a raw term number. Any `u64` can be wrapped (a peer may send one); check
    /// [`is_valid`](Self::is_valid) before acting on a term that came from outside.
    #[must_use]
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw value.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether the term is at most [`Term::MAX`].
    #[must_use]
    pub const fn is_valid(self) -> bool {
        self.0 <= Self::MAX.0
    }

    /// The following term, or `None` when there is none: at [`Term::MAX`] and above.
    #[must_use]
    pub const fn checked_next(self) -> Option<Self> {
        if self.0 >= Self::MAX.0 {
            None
        } else {
            Some(Self(self.0 + 1))
        }
    }

    /// The term as a fencing token for work done by the leader of this term.
    #[must_use]
    pub const fn as_fencing_token(self) -> FencingToken {
        FencingToken(self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The secret a lock holder proves ownership with: 128 random bits, shown as 32 hex digits.
///
/// Only the holder knows it; release and extend succeed only when the stored token matches, so
/// one client can never release another's lock.
///
/// ```
/// use distkit_core::LockToken;
///
/// let t = LockToken::from_u128(0xfeed);
/// assert_eq!(t.to_string(), "0000000000000000000000000000feed");
/// assert_eq!(t.to_string().parse::<LockToken>()?, t);
/// # Ok::<(), distkit_core::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LockToken(u128);

impl LockToken {
    /// Wraps 128 bits. Callers should pass random bits (the lock backends do).
    #[must_use]
    pub const fn from_u128(bits: u128) -> Self {
        Self(bits)
    }

    /// The raw bits.
    #[must_use]
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell tokens apart in logs without printing the whole secret.
        write!(f, "LockToken({:08x}..)", (self.0 >> 96) as u32)
    }
}

impl FromStr for LockToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid_input(
                "lock token",
                "it must be exactly 32 hexadecimal digits",
            ));
        }
        u128::from_str_radix(s, 16)
            .map(Self)
            .map_err(|e| Error::invalid_input("lock token", e.to_string()))
    }
}

impl TryFrom<String> for LockToken {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LockToken> for String {
    fn from(t: LockToken) -> Self {
        t.to_string()
    }
}
