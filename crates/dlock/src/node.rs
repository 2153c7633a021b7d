//! One Redis server as dlock talks to it: a shared, auto-reconnecting, multiplexed connection
//! (redis-rs [`ConnectionManager`]) whose every call has a deadline.
//!
//! All locks of a client share the node's one connection, so a thousand locks cost one socket.
//! A node is named by its URL with the password removed; that name is what errors show.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};

use crate::error::{humanize, Error, Result};
use crate::options::ClientOptions;

/// How often the connection manager retries a failed (re)connect before reporting the failure.
/// Few, because every caller has its own retry policy and deadline.
const RECONNECT_RETRIES: usize = 2;

/// A connected Redis server.
#[derive(Clone)]
pub(crate) struct Node {
    con: ConnectionManager,
    client: redis::Client,
    name: Arc<str>,
    command_timeout: Duration,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the connection to `url` and checks that the server answers.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse, [`Error::Auth`] for refused
    /// credentials, [`Error::Unavailable`] when the server cannot be reached in time.
    pub async fn connect(url: &str, options: &ClientOptions) -> Result<Node> {
        options.validate()?;
        let name: Arc<str> = redact_url(url).into();
        let client = redis::Client::open(url).map_err(|e| {
            Error::Config(format!(
                "bad Redis URL {name}: {}",
                scrub(&e.to_string(), url)
            ))
        })?;
        let config = manager_config(options);
        // The manager's own retries each have the connect timeout; bound the whole attempt too.
        let limit =
            options.connect_timeout * (RECONNECT_RETRIES as u32 + 1) + Duration::from_secs(1);
        let connecting = ConnectionManager::new_with_config(client.clone(), config);
        let con = match tokio::time::timeout(limit, connecting).await {
            Ok(Ok(con)) => con,
            Ok(Err(e)) => return Err(scrub_error(Error::from_redis(&name, e), url)),
            Err(_) => {
                return Err(Error::Unavailable {
                    node: name.to_string(),
                    reason: format!("could not connect within {}", humanize(limit)),
                })
            }
        };
        let node = Node {
            con,
            client,
            name,
            command_timeout: options.command_timeout,
        };
        // The manager connects lazily on some paths; make sure this server really answers
        // (and accepted our credentials) before handing out a client.
        node.ping().await?;
        Ok(node)
    }

    /// A node whose connection is opened on first use (and retried on every use after), for a
    /// Redlock master that is down when the client starts: it joins the quorum when it is back.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse.
    pub fn lazy(url: &str, options: &ClientOptions) -> Result<Node> {
        let name: Arc<str> = redact_url(url).into();
        let client = redis::Client::open(url).map_err(|e| {
            Error::Config(format!(
                "bad Redis URL {name}: {}",
                scrub(&e.to_string(), url)
            ))
        })?;
        let con = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(options))
            .map_err(|e| Error::from_redis(&name, e))?;
        Ok(Node {
            con,
            client,
            name,
            command_timeout: options.command_timeout,
        })
    }

    /// The node's URL without its password.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The driver's client, for dedicated connections (pub/sub).
    pub fn redis_client(&self) -> &redis::Client {
        &self.client
    }

    /// The per-command timeout.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// `PING`, within the command timeout.
    pub async fn ping(&self) -> Result<()> {
        let mut con = self.con.clone();
        let reply: String = self
            .deadline(
                self.command_timeout,
                redis::cmd("PING").query_async(&mut con),
            )
            .await?;
        debug_assert_eq!(reply, "PONG");
        Ok(())
    }

    /// Runs one command within the command timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut con = self.con.clone();
        self.deadline(self.command_timeout, cmd.query_async(&mut con))
            .await
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) within `timeout`.
    pub async fn eval<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T> {
        let mut con = self.con.clone();
        self.deadline(timeout, invocation.invoke_async(&mut con))
            .await
    }

    async fn deadline<T>(
        &self,
        timeout: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        // At least a millisecond: a zero deadline would fail calls that could have succeeded.
        let timeout = timeout.max(Duration::from_millis(1));
        match tokio::time::timeout(timeout, call).await {
            Ok(reply) => reply.map_err(|e| Error::from_redis(&self.name, e)),
            Err(_) => Err(Error::Unavailable {
                node: self.name.to_string(),
                reason: format!("no reply within {}", humanize(timeout)),
            }),
        }
    }
}

fn manager_config(options: &ClientOptions) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.command_timeout))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}

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
fn scrub(text: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(password) if !password.is_empty() => text.replace(&password, "***"),
        _ => text.to_owned(),
    }
}

fn scrub_error(error: Error, url: &str) -> Error {
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
