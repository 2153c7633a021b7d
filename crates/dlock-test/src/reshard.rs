//! Resharding a running [`RedisCluster`]: which master serves a key, and moving one slot (with
//! its keys) to another master by the standard steps `redis-cli --cluster reshard` takes.

use std::thread;
use std::time::{Duration, Instant};

use crate::cluster::RedisCluster;
use crate::server::RedisServer;

/// How many keys one `MIGRATE` carries.
const MIGRATE_BATCH: usize = 100;
/// `MIGRATE`'s own timeout (ms) for the transfer to the target.
const MIGRATE_TIMEOUT_MS: &str = "5000";
/// How long every master may take to agree on a moved slot's new owner.
const AGREE_TIMEOUT: Duration = Duration::from_secs(10);

impl RedisCluster {
    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of a running master).
    pub fn key_slot(&self, key: &str) -> u16 {
        self.any_running().cmd("CLUSTER", &["KEYSLOT", key])
    }

    /// The index of the master serving `key`'s slot.
    ///
    /// # Panics
    /// When no running master claims the slot.
    pub fn master_of(&self, key: &str) -> usize {
        self.master_of_slot(self.key_slot(key))
    }

    /// The index of the running master that serves `slot`, by its own account (the `myself`
    /// line of its `CLUSTER NODES`); a master migrating the slot away still serves it.
    ///
    /// # Panics
    /// When no running master claims the slot.
    pub fn master_of_slot(&self, slot: u16) -> usize {
        self.iter()
            .position(|master| master.is_running() && own_slots(master).contains(&slot))
            .unwrap_or_else(|| panic!("no running master serves slot {slot}"))
    }

    /// Master `index`'s cluster node id (`CLUSTER MYID`).
    pub fn node_id(&self, index: usize) -> String {
        self[index].cmd("CLUSTER", &["MYID"])
    }

    /// Moves `slot` and every key in it from its master to master `to`, as a resharding does
    /// (see [`RedisCluster::begin_slot_move`]), and returns once every running master names `to`
    /// as the slot's owner. Clients that still route the slot to the old master get `MOVED`.
    ///
    /// # Panics
    /// When `to` already serves the slot, or a step fails.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let moving = self.begin_slot_move(slot, to);
        moving.migrate_keys();
        moving.finish();
    }

    /// The first half of a slot move, to test what clients see mid-migration: `CLUSTER SETSLOT
    /// <slot> IMPORTING` on master `to`, then `MIGRATING` on the slot's master. Meanwhile the
    /// source still serves the keys it holds and answers `ASK` for those it does not (and
    /// `TRYAGAIN` to a multi-key command that names both kinds). Continue with
    /// [`SlotMove::migrate_keys`] and [`SlotMove::finish`].
    ///
    /// # Panics
    /// When `to` already serves the slot, or a step fails.
    pub fn begin_slot_move(&self, slot: u16, to: usize) -> SlotMove<'_> {
        let from = self.master_of_slot(slot);
        assert_ne!(from, to, "master {to} already serves slot {slot}");
        let moving = SlotMove {
            cluster: self,
            slot: slot.to_string(),
            from,
            to,
            from_id: self.node_id(from),
            to_id: self.node_id(to),
        };
        let setslot = |on: usize, state: &str, id: &str| {
            let _: () = self[on].cmd("CLUSTER", &["SETSLOT", &moving.slot, state, id]);
        };
        setslot(to, "IMPORTING", &moving.from_id);
        setslot(from, "MIGRATING", &moving.to_id);
        moving
    }

    fn any_running(&self) -> &RedisServer {
        self.iter()
            .find(|master| master.is_running())
            .expect("a running master")
    }
}

/// A slot move under way (from [`RedisCluster::begin_slot_move`]): the source migrates the
/// slot to the target. Dropping it unfinished leaves the slot migrating.
#[derive(Debug)]
pub struct SlotMove<'a> {
    cluster: &'a RedisCluster,
    slot: String,
    from: usize,
    to: usize,
    from_id: String,
    to_id: String,
}

impl SlotMove<'_> {
    /// Moves every key of the slot still on the source to the target (`CLUSTER
    /// GETKEYSINSLOT`, then `MIGRATE … KEYS …` in batches, until none is left); returns how
    /// many were moved. Expiries go with the keys.
    pub fn migrate_keys(&self) -> usize {
        let source = &self.cluster[self.from];
        let batch = MIGRATE_BATCH.to_string();
        let mut moved = 0;
        loop {
            let keys: Vec<String> = source.cmd("CLUSTER", &["GETKEYSINSLOT", &self.slot, &batch]);
            if keys.is_empty() {
                return moved;
            }
            self.migrate(&keys.iter().map(String::as_str).collect::<Vec<_>>());
            moved += keys.len();
        }
    }

    /// Moves `keys` (all in the slot) from the source to the target with one `MIGRATE … KEYS`
    /// (`REPLACE`): a part of the slot, to leave its keys split between the two masters.
    pub fn migrate(&self, keys: &[&str]) {
        let port = self.cluster[self.to].port().to_string();
        let mut args = vec![
            "127.0.0.1",
            port.as_str(),
            "",
            "0",
            MIGRATE_TIMEOUT_MS,
            "REPLACE",
            "KEYS",
        ];
        args.extend_from_slice(keys);
        // "OK", or "NOKEY" when every key expired meanwhile.
        let _: redis::Value = self.cluster[self.from].cmd("MIGRATE", &args);
    }

    /// Ends the move: `CLUSTER SETSLOT <slot> NODE <target>` on the target, the source, then
    /// every other running master; returns once each of them names the target as the owner.
    ///
    /// # Panics
    /// When keys of the slot are still on the source (call [`SlotMove::migrate_keys`] first),
    /// or the masters do not agree in time.
    pub fn finish(self) {
        let cluster = self.cluster;
        let others = (0..cluster.len()).filter(|&i| i != self.from && i != self.to);
        for on in [self.to, self.from].into_iter().chain(others) {
            if cluster[on].is_running() {
                let _: () =
                    cluster[on].cmd("CLUSTER", &["SETSLOT", &self.slot, "NODE", &self.to_id]);
            }
        }
        let deadline = Instant::now() + AGREE_TIMEOUT;
        for master in cluster.iter().filter(|master| master.is_running()) {
            while owner_seen_by(master, &self.slot).as_deref() != Some(self.to_id.as_str()) {
                assert!(
                    Instant::now() < deadline,
                    "port {} never named {} the owner of slot {}:\n{}",
                    master.port(),
                    self.to_id,
                    self.slot,
                    master.cmd::<String>("CLUSTER", &["NODES"])
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The slots `master` serves, by its own `CLUSTER NODES` line (`myself`).
fn own_slots(master: &RedisServer) -> Vec<u16> {
    let nodes: String = master.cmd("CLUSTER", &["NODES"]);
    let myself = nodes
        .lines()
        .find(|line| line.split(' ').nth(2).is_some_and(|f| f.contains("myself")))
        .expect("CLUSTER NODES has a myself line");
    slots_of_line(myself)
}

/// The node id that `master` believes serves `slot`, from its `CLUSTER NODES`.
fn owner_seen_by(master: &RedisServer, slot: &str) -> Option<String> {
    let slot: u16 = slot.parse().expect("a slot number");
    let nodes: String = master.cmd("CLUSTER", &["NODES"]);
    nodes
        .lines()
        .find(|line| slots_of_line(line).contains(&slot))
        .and_then(|line| line.split(' ').next())
        .map(str::to_owned)
}

/// The slots a `CLUSTER NODES` line assigns to its node (fields 9 on: `n` or `a-b`; the
/// `[slot->-id]` / `[slot-<-id]` migration markers are not assignments).
fn slots_of_line(line: &str) -> Vec<u16> {
    line.split(' ')
        .skip(8)
        .filter(|field| !field.starts_with('['))
        .filter_map(|field| {
            let (start, end) = field.split_once('-').unwrap_or((field, field));
            Some(start.parse::<u16>().ok()?..=end.parse::<u16>().ok()?)
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slot_ranges_and_skips_migration_markers() {
        let line = "abc 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-2 7 \
                    [8->-def] [9-<-ghi]";
        assert_eq!(slots_of_line(line), vec![0, 1, 2, 7]);
        assert!(slots_of_line("abc 127.0.0.1:7001@17001 slave abc 0 0 1 connected").is_empty());
    }

    /// A slot moves with its keys and their expiries: the new owner serves them, the old one
    /// redirects, and every master agrees on the owner.
    #[test]
    fn a_slot_moves_to_another_master_with_its_keys() {
        let cluster = RedisCluster::start(3);
        let slot = cluster.key_slot("{moving}");
        let from = cluster.master_of_slot(slot);
        let to = (from + 1) % cluster.len();
        for key in ["{moving}:a", "{moving}:b", "{moving}:c"] {
            let _: () = cluster[from].cmd("SET", &[key, "v", "PX", "60000"]);
        }
        cluster.move_slot(slot, to);
        assert_eq!(cluster.master_of("{moving}:a"), to);
        let count = |on: usize| -> u64 {
            cluster[on].cmd("CLUSTER", &["COUNTKEYSINSLOT", &slot.to_string()])
        };
        assert_eq!((count(from), count(to)), (0, 3));
        let value: String = cluster[to].cmd("GET", &["{moving}:b"]);
        assert_eq!(value, "v");
        let ttl: i64 = cluster[to].cmd("PTTL", &["{moving}:b"]);
        assert!(ttl > 0, "the expiry moved with the key: {ttl}");
        let mut con = cluster[from].connection();
        let redirected: redis::RedisResult<String> =
            redis::cmd("GET").arg("{moving}:b").query(&mut con);
        let error = redirected.expect_err("the old master redirects");
        assert_eq!(error.code(), Some("MOVED"), "{error}");
    }
}
