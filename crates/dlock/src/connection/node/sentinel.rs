//! A master found through Sentinel, and following it across failovers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{manager_config, redact_url, Conn, Current, Node};
use crate::error::{Error, Result};
use crate::options::ClientOptions;
use crate::units::humanize;

/// How a Sentinel-backed node finds its master again after a failover.
pub(super) struct SentinelSource {
    pub(super) client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    /// One re-resolution at a time; errors meanwhile do not start another.
    pub(super) resolving: AtomicBool,
    /// The sentinels' URLs and the master's name, for watching `+switch-master` announcements.
    pub(super) sentinels: Vec<String>,
    pub(super) master_name: String,
}

/// A master found through Sentinel: which master, which sentinels, how to log in to it.
///
/// ```
/// let config = dlock::SentinelConfig::new("mymaster", ["redis://sentinel-1:26379/"])
///     .password("master-secret")
///     .db(2);
/// assert_eq!(config.master_name(), "mymaster");
/// ```
#[derive(Clone)]
pub struct SentinelConfig {
    master_name: String,
    sentinels: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("master_name", &self.master_name)
            .field(
                "sentinels",
                &self
                    .sentinels
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

impl SentinelConfig {
    /// The master `master_name` as the sentinels at `sentinels` (their URLs, with their own
    /// credentials if any) report it.
    pub fn new<S: AsRef<str>>(master_name: &str, sentinels: impl IntoIterator<Item = S>) -> Self {
        SentinelConfig {
            master_name: master_name.to_owned(),
            sentinels: sentinels
                .into_iter()
                .map(|s| s.as_ref().to_owned())
                .collect(),
            username: None,
            password: None,
            db: 0,
        }
    }

    /// The ACL user for the master (not the sentinels).
    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.to_owned());
        self
    }

    /// The password for the master (not the sentinels).
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    /// The database number on the master.
    pub fn db(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// The monitored master's name.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }
}

impl Node {
    /// The current master of a Sentinel-monitored group. The node follows failovers: when a
    /// call fails, it asks the sentinels again and switches to the master they name.
    ///
    /// # Errors
    /// [`Error::Config`] for bad sentinel URLs or no sentinel; [`Error::Unavailable`] when no
    /// sentinel answers or none knows the master; [`Error::Auth`] when the master refuses.
    pub async fn sentinel(config: &SentinelConfig, options: &ClientOptions) -> Result<Node> {
        options.validate()?;
        if config.sentinels.is_empty() {
            return Err(Error::Config(
                "Sentinel needs at least one sentinel URL".into(),
            ));
        }
        let name: Arc<str> = format!(
            "{} (via sentinels {})",
            config.master_name,
            config
                .sentinels
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(", ")
        )
        .into();
        let mut master = redis::RedisConnectionInfo::default().set_db(config.db);
        if let Some(username) = &config.username {
            master = master.set_username(username);
        }
        if let Some(password) = &config.password {
            master = master.set_password(password);
        }
        let node_info = redis::sentinel::SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(master);
        let mut sentinel = redis::sentinel::SentinelClient::build(
            config.sentinels.clone(),
            &config.master_name,
            Some(node_info),
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(|e| Error::Config(format!("bad sentinel configuration for {name}: {e}")))?;
        let client = resolve_master(&mut sentinel, &name, options.connect_timeout).await?;
        let con = connect_manager(client.clone(), &name, options).await?;
        let node = Node {
            current: Arc::new(RwLock::new(Current {
                con: Conn::Single(con),
                client,
                links: Default::default(),
            })),
            sentinel: Some(Arc::new(SentinelSource {
                client: tokio::sync::Mutex::new(sentinel),
                resolving: AtomicBool::new(false),
                sentinels: config.sentinels.clone(),
                master_name: config.master_name.clone(),
            })),
            name,
            command_timeout: options.command_timeout,
            options: options.clone(),
        };
        node.ping().await?;
        Ok(node)
    }

    /// After a failed call on a Sentinel-backed node: ask the sentinels for the master in the
    /// background and switch to it if it moved. The failed call is not retried here; callers
    /// already retry (waits, renewals).
    pub(crate) fn follow_failover(&self) {
        let Some(source) = self.sentinel.clone() else {
            return;
        };
        if source.resolving.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            let _ = node.switch_if_moved().await;
            source.resolving.store(false, Ordering::SeqCst);
        });
    }

    /// The current master's address, `host:port`.
    pub(crate) fn current_address(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .client
            .get_connection_info()
            .addr()
            .to_string()
    }

    /// For a Sentinel-backed node: its sentinels' URLs and the master's name.
    pub(crate) fn sentinel_watch(&self) -> Option<(Vec<String>, String)> {
        let source = self.sentinel.as_ref()?;
        Some((source.sentinels.clone(), source.master_name.clone()))
    }

    /// For a Sentinel-backed node: asks the sentinels for the master now and switches to it if
    /// it moved (true). The link monitor calls this when its connection drops, because Sentinel
    /// drops every client of a demoted master: a re-verification must read the new master, not
    /// the old one, which still answers reads as a replica. Other nodes: false at once.
    pub(crate) async fn switch_if_moved(&self) -> Result<bool> {
        let Some(source) = self.sentinel.clone() else {
            return Ok(false);
        };
        let moved = async {
            let mut sentinel = source.client.lock().await;
            let client =
                resolve_master(&mut sentinel, &self.name, self.options.connect_timeout).await?;
            let unchanged = self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .client
                .get_connection_info()
                .addr()
                == client.get_connection_info().addr();
            if unchanged {
                return Ok::<_, Error>(false);
            }
            let con = connect_manager(client.clone(), &self.name, &self.options).await?;
            *self.current.write().unwrap_or_else(PoisonError::into_inner) = Current {
                con: Conn::Single(con),
                client,
                links: Default::default(),
            };
            Ok(true)
        }
        .await;
        match &moved {
            Ok(true) => tracing::warn!(node = %self.name, "followed a failover to a new master"),
            Ok(false) => {}
            Err(error) => {
                tracing::debug!(node = %self.name, %error, "sentinels could not name a master")
            }
        }
        moved
    }
}

/// Asks the sentinels for the master, within `timeout`. A sentinel may briefly name no master
/// (during a failover, or right after it started): such answers are retried until the timeout.
async fn resolve_master(
    sentinel: &mut redis::sentinel::SentinelClient,
    name: &str,
    timeout: Duration,
) -> Result<redis::Client> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    let asking = async {
        loop {
            match sentinel.async_get_client().await {
                Ok(client) => return client,
                Err(e) => last_error = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match tokio::time::timeout_at(deadline, asking).await {
        Ok(client) => Ok(client),
        Err(_) => Err(Error::Unavailable {
            node: name.to_owned(),
            reason: match last_error {
                Some(e) => format!("no sentinel named a master: {e}"),
                None => format!("the sentinels did not answer within {}", humanize(timeout)),
            },
        }),
    }
}

async fn connect_manager(
    client: redis::Client,
    name: &str,
    options: &ClientOptions,
) -> Result<ConnectionManager> {
    let connecting = ConnectionManager::new_with_config(client, manager_config(options));
    match tokio::time::timeout(options.connect_timeout, connecting).await {
        Ok(Ok(con)) => Ok(con),
        Ok(Err(e)) => Err(Error::from_redis(name, e)),
        Err(_) => Err(Error::Unavailable {
            node: name.to_owned(),
            reason: "could not connect to the master in time".into(),
        }),
    }
}
