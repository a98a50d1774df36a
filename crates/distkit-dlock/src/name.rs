//! Lock names and the Redis keys derived from them.

use distkit_core::Error;

/// The longest lock name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Checks a lock name: 1 to [`MAX_NAME_LEN`] bytes, no control characters, no `{` or `}`
/// (they would break the hash tag that keeps a lock's keys in one cluster slot).
pub(crate) fn validate(name: &str) -> Result<(), Error> {
    check_name("lock name", name)
}

/// Checks `name` against the rules of a lock name (1 to [`MAX_NAME_LEN`] bytes, no control
/// characters, no `{` or `}`), for a name that becomes one, such as an election group;
/// `what` names it in the error.
///
/// # Errors
///
/// [`Error::InvalidInput`] for an empty name or one with a control character or a brace;
/// [`Error::TooLarge`] for one over [`MAX_NAME_LEN`] bytes.
pub fn check_name(what: &'static str, name: &str) -> Result<(), Error> {
    let bad = |reason: String| Error::InvalidInput { what, reason };
    if name.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::too_large(what, name.len(), MAX_NAME_LEN));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || *c == '{' || *c == '}')
    {
        return Err(bad(format!(
            "it contains {c:?}; control characters and braces are not allowed"
        )));
    }
    Ok(())
}

/// The keys of one lock: the lock itself, its fencing counter, and its release channel. The
/// `{name}` hash tag keeps the lock and its counter in one Redis Cluster slot.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub(crate) lock: String,
    pub(crate) fence: String,
    pub(crate) channel: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        let lock = format!("{prefix}{{{name}}}");
        Self {
            fence: format!("{lock}:fence"),
            channel: format!("{lock}:released"),
            lock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate("orders").is_ok());
        assert!(validate(&"x".repeat(MAX_NAME_LEN)).is_ok());
        for bad in ["", "a{b", "a}b", "nul\0", "line\nfeed"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert!(validate(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn keys_share_a_hash_tag() {
        let k = Keys::new("distkit:lock:", "orders");
        assert_eq!(k.lock, "distkit:lock:{orders}");
        assert_eq!(k.fence, "distkit:lock:{orders}:fence");
        assert_eq!(k.channel, "distkit:lock:{orders}:released");
    }
}
