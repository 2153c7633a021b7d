//! Lock names and the Redis keys behind them.
//!
//! The lock key is the name itself and holds the owner's token as a plain string, so a dlock
//! lock and one taken with `SET name token NX PX ttl` by any other tool exclude each other.
//! Companion keys (holder info, fencing counter) are `{<slot part>}:dlock:<kind>:<name>`:
//! - the braces hold the part of the name Redis Cluster hashes (its hash tag if it has one,
//!   else the whole name), so every companion lives in the lock key's slot and every script is
//!   single-slot: `main:hello` → `{main:hello}:dlock:info:main:hello`,
//!   `{user:42}:job` → `{user:42}:dlock:info:{user:42}:job`;
//! - the full name at the end keeps companions of different names apart (`a` and `{a}` hash
//!   alike but have different companions) and lets `list` recover names from a `SCAN`.
//!
//! Names of the companions' form, `{…}:dlock:…`, are reserved: a lock named
//! `{x}:dlock:fence:x` would be lock `x`'s fencing counter, and each would overwrite the
//! other's state.

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
    /// Fair mode's wait queue: waiter tokens in arrival order (a list).
    pub queue: String,
    /// Fair mode's waiter leases: token → server time (ms) when the entry expires (a zset).
    pub queue_leases: String,
    /// The hand-off terms of queued waiters that accept one: token → JSON of host, pid,
    /// label and claim lease (a hash).
    pub waiters: String,
    /// Reentrant mode's hold count.
    pub holds: String,
    /// A semaphore's hash: its stored permit limit and each holder's info (the name itself
    /// is then the zset of holders and their lease ends).
    pub semaphore: String,
    /// The pub/sub channel a release publishes on to wake waiters.
    pub channel: String,
}

impl LockKeys {
    /// Validates `name` and derives its companion keys.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty or over-long name, one whose `}` makes it impossible
    /// to give its companions the same cluster slot, or one of the companions' reserved form.
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
        if is_reserved(name) {
            return Err(Error::Config(format!(
                "lock name {name:?} is reserved: names of the form \"{{…}}:dlock:…\" are the \
                 companion keys (holder info, fencing counter, wait queue) of other locks"
            )));
        }
        let slot = match hash_tag(name) {
            Some(tag) => tag,
            None if name.contains('}') => {
                return Err(Error::Config(format!(
                    "lock name {name:?} contains '}}' outside a hash tag, so its companion keys \
                 could not share its Redis Cluster slot; use a name without '}}' or with a \
                 hash tag such as \"{{tag}}rest\""
                )))
            }
            None => name,
        };
        let companion = |kind: &str| format!("{{{slot}}}:dlock:{kind}:{name}");
        Ok(LockKeys {
            lock: name.to_owned(),
            info: format!("{{{slot}}}:{INFO_MARK}{name}"),
            fence: companion("fence"),
            queue: companion("queue"),
            queue_leases: companion("queue-leases"),
            waiters: companion("waiters"),
            holds: companion("holds"),
            semaphore: companion("sem"),
            channel: companion("released"),
        })
    }

    /// The part of the name Redis Cluster hashes (its hash tag, else the whole name): every key
    /// of this lock lives in that slot.
    pub fn slot(&self) -> &str {
        hash_tag(&self.lock).unwrap_or(&self.lock)
    }

    /// Another companion key of this name, `{<slot part>}:dlock:<kind>:<name>` (a primitive's
    /// own keys, e.g. a read-write lock's readers).
    pub fn companion(&self, kind: &str) -> String {
        format!("{{{}}}:dlock:{kind}:{}", self.slot(), self.lock)
    }

    /// The lock name behind a holder-info key, as `SCAN` finds them; `None` for other keys.
    pub fn name_from_info_key(key: &str) -> Option<&str> {
        let rest = key.strip_prefix('{')?;
        let close = rest.find('}')?;
        let name = rest[close + 1..]
            .strip_prefix(':')?
            .strip_prefix(INFO_MARK)?;
        (LockKeys::new(name).ok()?.info == key).then_some(name)
    }
}

/// Whether `name` has the companions' form `{…}:dlock:…` (any kind, so kinds added later are
/// covered too).
fn is_reserved(name: &str) -> bool {
    name.strip_prefix('{')
        .and_then(|rest| rest.find('}').map(|close| &rest[close + 1..]))
        .is_some_and(|after| after.starts_with(":dlock:"))
}

/// What follows the slot tag in every holder-info key.
const INFO_MARK: &str = "dlock:info:";

/// A `SCAN MATCH` pattern for the holder-info keys of names matching `name_pattern`.
pub(crate) fn info_scan_pattern(name_pattern: &str) -> String {
    format!("{{*}}:{INFO_MARK}{name_pattern}")
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
        assert_eq!(keys.info, "{main:hello}:dlock:info:main:hello");
        assert_eq!(keys.fence, "{main:hello}:dlock:fence:main:hello");
        let tagged = LockKeys::new("{user:42}:job").expect("valid");
        assert_eq!(tagged.info, "{user:42}:dlock:info:{user:42}:job");
    }

    #[test]
    fn names_that_hash_alike_keep_separate_companions() {
        let plain = LockKeys::new("a").expect("valid");
        let tagged = LockKeys::new("{a}").expect("valid");
        assert_ne!(plain.info, tagged.info);
        assert_ne!(plain.fence, tagged.fence);
    }

    #[test]
    fn names_are_recovered_from_info_keys() {
        for name in [
            "main:hello",
            "{user:42}:job",
            "a{b",
            "{a}",
            "x:dlock:info:y",
        ] {
            let keys = LockKeys::new(name).expect(name);
            assert_eq!(LockKeys::name_from_info_key(&keys.info), Some(name));
        }
        assert_eq!(LockKeys::name_from_info_key("{a}:dlock:info:b"), None);
        assert_eq!(LockKeys::name_from_info_key("plain"), None);
        assert_eq!(info_scan_pattern("main:*"), "{*}:dlock:info:main:*");
    }

    #[test]
    fn companions_hash_like_the_lock_key() {
        for name in ["main:hello", "{user:42}:job", "a{b", "{a}{b}", "tag{"] {
            let keys = LockKeys::new(name).expect(name);
            assert_eq!(hashed_part(&keys.info), hashed_part(&keys.lock), "{name}");
            for companion in [
                &keys.fence,
                &keys.queue,
                &keys.queue_leases,
                &keys.waiters,
                &keys.holds,
            ] {
                assert_eq!(hashed_part(companion), hashed_part(&keys.lock), "{name}");
            }
        }
    }

    #[test]
    fn companion_keys_are_not_valid_names() {
        let keys = LockKeys::new("x").expect("valid");
        for companion in [
            &keys.info,
            &keys.fence,
            &keys.queue,
            &keys.queue_leases,
            &keys.waiters,
            &keys.holds,
            &keys.channel,
        ] {
            let err = LockKeys::new(companion).expect_err(companion);
            assert!(err.is_config(), "{companion}");
            assert!(err.to_string().contains("{…}:dlock:"), "{err}");
        }
        // The same words elsewhere are fine.
        for name in ["x:dlock:info:y", "{x}dlock:fence:x", "a{x}:dlock:fence:x"] {
            assert!(LockKeys::new(name).is_ok(), "{name}");
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
