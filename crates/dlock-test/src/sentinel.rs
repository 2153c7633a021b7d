//! Sentinels watching a master: a real failover on loopback.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::server::{find_redis_server, RedisServer};

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "dlock-master";

/// How long a failover may take before the test gives up (down-after 1 s, then an election).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// N `redis-server --sentinel` processes monitoring one master (quorum 2), killed on drop.
#[derive(Debug)]
pub struct Sentinels {
    children: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    /// Starts `n` sentinels monitoring `master` as [`MASTER_NAME`], with a 1 s down-after, and
    /// waits until each of them answers and knows `replicas` replicas.
    ///
    /// # Panics
    /// When a sentinel cannot start or never sees the replicas.
    pub fn start(master: &RedisServer, n: usize, replicas: usize) -> Sentinels {
        Self::start_with_auth(master, n, replicas, None)
    }

    /// As [`Sentinels::start`], for a master (and replicas) that require `password`.
    ///
    /// # Panics
    /// As [`Sentinels::start`].
    pub fn start_with_auth(
        master: &RedisServer,
        n: usize,
        replicas: usize,
        password: Option<&str>,
    ) -> Sentinels {
        let dir = tempfile::Builder::new()
            .prefix("dlock-sentinel-")
            .tempdir()
            .expect("temp dir");
        let mut children = Vec::new();
        let mut ports = Vec::new();
        for i in 0..n {
            let port = crate::server::free_port();
            let config = dir.path().join(format!("sentinel-{i}.conf"));
            fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel-{i}.log\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n{auth}",
                    dir = dir.path().display(),
                    master = master.port(),
                    auth = password
                        .map(|p| format!("sentinel auth-pass {MASTER_NAME} {p}\n"))
                        .unwrap_or_default(),
                ),
            )
            .expect("write sentinel config");
            let child = Command::new(find_redis_server())
                .arg(&config)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn a sentinel");
            children.push(child);
            ports.push(port);
        }
        let sentinels = Sentinels {
            children,
            ports,
            _dir: dir,
        };
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        for &port in &sentinels.ports {
            loop {
                let known = sentinel_query(port, &["SENTINEL", "REPLICAS", MASTER_NAME])
                    .map(|reply| reply.matches("ip").count() >= replicas)
                    .unwrap_or(false);
                if known {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {port} never saw the replicas"
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
        sentinels
    }

    /// `redis://127.0.0.1:<port>/` for every sentinel.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// The port the sentinels currently name as master.
    pub fn master_port(&self) -> Option<u16> {
        let reply = sentinel_query(
            self.ports[0],
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        )?;
        reply.lines().last()?.trim().parse().ok()
    }

    /// Waits until the sentinels name a master other than `old_port`; returns its port.
    ///
    /// # Panics
    /// When no failover happens in time.
    pub fn wait_for_failover(&self, old_port: u16) -> u16 {
        let deadline = Instant::now() + FAILOVER_TIMEOUT;
        loop {
            if let Some(port) = self.master_port().filter(|&p| p != old_port) {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "no failover within {FAILOVER_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One command to a sentinel, its reply flattened to text lines.
fn sentinel_query(port: u16, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut con = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let value: redis::Value = cmd.query(&mut con).ok()?;
    Some(flatten(&value))
}

fn flatten(value: &redis::Value) -> String {
    match value {
        redis::Value::Array(items) => items.iter().map(flatten).collect::<Vec<_>>().join("\n"),
        redis::Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{}\n{}", flatten(k), flatten(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}
