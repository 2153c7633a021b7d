//! Passwords never leave dlock: URLs in messages and logs are redacted.

use crate::error::Error;

/// `url` with any password replaced by `***` (userinfo, or a `pass`/`password` query
/// parameter as redis-rs accepts for `unix://` URLs), for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            let secret_query = parsed
                .query_pairs()
                .any(|(name, _)| matches!(name.as_ref(), "pass" | "password"));
            if secret_query {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(name, value)| {
                        let value = if matches!(name.as_ref(), "pass" | "password") {
                            "***".to_owned()
                        } else {
                            value.into_owned()
                        };
                        (name.into_owned(), value)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        // Unparseable: keep the scheme and host part people need to spot the typo, drop any
        // userinfo, which is where a password would be.
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
            }
            _ => url.to_owned(),
        },
    }
}

/// Removes the password of `url` from `text` (belt and braces for driver messages).
pub(super) fn scrub(text: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(password) if !password.is_empty() => text.replace(&password, "***"),
        _ => text.to_owned(),
    }
}

pub(super) fn scrub_error(error: Error, url: &str) -> Error {
    match error {
        Error::Unavailable { node, reason } => Error::Unavailable {
            node,
            reason: scrub(&reason, url),
        },
        Error::Auth { node, reason } => Error::Auth {
            node,
            reason: scrub(&reason, url),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("redis://user:hunter2@db.example:6380/2"),
            "redis://user:***@db.example:6380/2"
        );
        assert_eq!(redact_url("redis://:hunter2@h/"), "redis://:***@h/");
        assert_eq!(redact_url("redis://h:6379/"), "redis://h:6379/");
        let unix = redact_url("unix:///run/redis.sock?db=1&pass=hunter2");
        assert!(!unix.contains("hunter2") && unix.contains("db=1"), "{unix}");
        let broken = redact_url("redis://u:hunter2@h:notaport");
        assert!(!broken.contains("hunter2"), "{broken}");
    }

    #[test]
    fn scrub_removes_the_password_from_messages() {
        assert_eq!(
            scrub("failed for redis://:pw1@h", "redis://:pw1@h"),
            "failed for redis://:***@h"
        );
    }
}
