//! A small Redis Cluster on loopback: N masters, every slot assigned.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::server::{RedisServer, ServerOptions};

/// How long a new cluster may take to agree that every slot is served.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// N cluster-enabled masters sharing the 16384 slots, killed on drop. They start without
/// replicas; [`RedisCluster::start_replica`] adds one.
#[derive(Debug)]
pub struct RedisCluster {
    masters: Vec<RedisServer>,
    /// How every node of this cluster is started (replicas too).
    node_options: ServerOptions,
}

impl RedisCluster {
    /// Starts `n` masters (at least 3, as `redis-cli --cluster create` demands), assigns the
    /// slots and waits until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    /// When the cluster cannot be formed, with `redis-cli`'s output.
    pub fn start(n: usize) -> RedisCluster {
        RedisCluster::start_with(n, true)
    }

    /// As [`RedisCluster::start`], but every master keeps serving its own slots while another
    /// is down (`cluster-require-full-coverage no`), as clusters that prefer partial service
    /// are run: for faults on one master that must not stop the rest.
    pub fn start_tolerant(n: usize) -> RedisCluster {
        RedisCluster::start_with(n, false)
    }

    fn start_with(n: usize, full_coverage: bool) -> RedisCluster {
        let coverage = if full_coverage { "yes" } else { "no" };
        let node_options = ServerOptions {
            extra_args: [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-require-full-coverage",
                coverage,
            ]
            .map(String::from)
            .to_vec(),
            ..ServerOptions::default()
        };
        let masters: Vec<RedisServer> = (0..n)
            .map(|_| RedisServer::start_with(node_options.clone()))
            .collect();
        let addresses: Vec<String> = masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port()))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("redis-cli (from redis-tools) is needed for clusters: {e}"));
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        for master in &masters {
            loop {
                let info: String = master.cmd("CLUSTER", &["INFO"]);
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never became ok:\n{info}"
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster {
            masters,
            node_options,
        }
    }

    /// Starts a replica of master `index`: a new cluster node that meets the master, is told
    /// to replicate it (`CLUSTER REPLICATE`), and is returned once its replication link is up
    /// and the master counts it as an online replica (so `WAIT` on the master counts it).
    /// Killed on drop; pausing it (SIGSTOP) makes it stop acknowledging writes. A master paused
    /// longer than the node timeout (2 s) is failed over to it.
    ///
    /// # Panics
    /// When the node cannot join or sync within the cluster timeout.
    pub fn start_replica(&self, index: usize) -> RedisServer {
        let master = &self.masters[index];
        let master_id: String = master.cmd("CLUSTER", &["MYID"]);
        let replica = RedisServer::start_with(self.node_options.clone());
        let port = master.port().to_string();
        let _: () = replica.cmd("CLUSTER", &["MEET", "127.0.0.1", &port]);
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        // REPLICATE fails with "Unknown node" until the handshake made the master known.
        while replica
            .try_cmd::<()>("CLUSTER", &["REPLICATE", &master_id])
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the new node never learnt master {index}:\n{}",
                replica.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        loop {
            let own: String = replica.cmd("INFO", &["replication"]);
            let master_side: String = master.cmd("INFO", &["replication"]);
            let replica_line = format!("port={},state=online", replica.port());
            if own.contains("master_link_status:up") && master_side.contains(&replica_line) {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "the replica of master {index} never synced:\n{own}\n{master_side}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every master's URL (any works as a seed).
    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(RedisServer::url).collect()
    }
}

impl std::ops::Deref for RedisCluster {
    type Target = [RedisServer];
    fn deref(&self) -> &[RedisServer] {
        &self.masters
    }
}

/// Faults on one master (`cluster[i].restart_empty()`, `.pause()`, `.kill()`): a restarted
/// master keeps its `nodes.conf`, so it rejoins with its slots and without its keys.
impl std::ops::DerefMut for RedisCluster {
    fn deref_mut(&mut self) -> &mut [RedisServer] {
        &mut self.masters
    }
}
