//! Lock names and the Redis keys behind them.
//!
//! The lock key is the name itself and holds the owner's token as a plain string, so a dlock
//! lock and one taken with `SET name token NX PX ttl` by any other tool exclude each other.
//! Companion keys (holder info, fencing counter) are built so they hash to the lock key's Redis
//! Cluster slot, which keeps every script single-slot:
//! - a name with a hash tag (`{user:42}:job`) already pins the slot; companions append a suffix
//!   and keep the same first tag;
//! - any other name is wrapped whole as the tag (`{main:hello}:dlock:info`), which hashes
//!   exactly as the bare name does.

use crate::error::{Error, Result};

/// Longest accepted lock name, in bytes. Redis allows far longer keys, but a name this long is
/// almost surely a bug (a payload passed as a name), and every script call carries it three times.
pub const MAX_NAME_LEN: usize = 1024;

/// A validated lock name with its companion keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LockKeys {
    /// The lock key: the name itself.
    pub lock: String,
    /// Hash with the holder's host, pid, label, start time and fencing token; expires with
    /// the lease.
    pub info: String,
    /// The fencing counter: the last token granted for this name.
    pub fence: String,
}

impl LockKeys {
    /// Validates `name` and derives its companion keys.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty or over-long name, or one whose `}` makes it impossible
    /// to give its companions the same cluster slot.
    pub fn new(name: &str) -> Result<LockKeys> {
        if name.is_empty() {
            return Err(Error::Config("lock name is empty".into()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(Error::Config(format!(
                "lock name is {} bytes long; the limit is {MAX_NAME_LEN}",
                name.len()
            )));
        }
        let prefix = if hash_tag(name).is_some() {
            name.to_owned()
        } else if name.contains('}') {
            return Err(Error::Config(format!(
                "lock name {name:?} contains '}}' outside a hash tag, so its companion keys \
                 could not share its Redis Cluster slot; use a name without '}}' or with a \
                 hash tag such as \"{{tag}}rest\""
            )));
        } else {
            format!("{{{name}}}")
        };
        Ok(LockKeys {
            lock: name.to_owned(),
            info: format!("{prefix}:dlock:info"),
            fence: format!("{prefix}:dlock:fence"),
        })
    }
}

/// The part of `key` that Redis Cluster hashes, when the key has a non-empty hash tag: the
/// text between the first `{` and the first `}` after it.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

/// The bytes Redis Cluster hashes for `key`.
#[cfg(test)]
pub(crate) fn hashed_part(key: &str) -> &str {
    hash_tag(key).unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_wrapped_whole() {
        let keys = LockKeys::new("main:hello").expect("valid");
        assert_eq!(keys.lock, "main:hello");
        assert_eq!(keys.info, "{main:hello}:dlock:info");
        assert_eq!(keys.fence, "{main:hello}:dlock:fence");
    }

    #[test]
    fn companions_hash_like_the_lock_key() {
        for name in ["main:hello", "{user:42}:job", "a{b", "{a}{b}", "tag{"] {
            let keys = LockKeys::new(name).expect(name);
            assert_eq!(hashed_part(&keys.info), hashed_part(&keys.lock), "{name}");
            assert_eq!(hashed_part(&keys.fence), hashed_part(&keys.lock), "{name}");
        }
    }

    #[test]
    fn bad_names_are_config_errors() {
        assert!(LockKeys::new("").expect_err("empty").is_config());
        assert!(LockKeys::new(&"x".repeat(MAX_NAME_LEN + 1))
            .expect_err("long")
            .is_config());
        assert!(LockKeys::new("a}b").expect_err("brace").is_config());
        assert!(LockKeys::new("a{}b}").expect_err("empty tag").is_config());
        assert!(LockKeys::new("x{}y{z}")
            .expect_err("first tag empty")
            .is_config());
        assert!(LockKeys::new(&"x".repeat(MAX_NAME_LEN)).is_ok());
    }
}
