//! Background releases: dropped guards and undone acquisitions, sent beside the watchdog's
//! loop so a slow or cut node delays only that work, never renewals or loss reports.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::batch::{self, MAX_BATCH};
use crate::connection::quorum::Nodes;
use crate::engine::ops::ReleaseOp;

/// A hold to release in the background, and on which nodes (`None`: every node).
pub(super) type Targeted = (Arc<dyn ReleaseOp>, Option<Vec<usize>>);

/// Work running beside the loop. Flushes wait for what was started before them: every task
/// holds a clone of the current epoch's sender, and a flush closes the epoch and waits for its
/// channel to close.
#[derive(Debug)]
pub(super) struct Background {
    epoch: mpsc::Sender<()>,
    epoch_closed: mpsc::Receiver<()>,
}

impl Background {
    pub fn new() -> Background {
        let (epoch, epoch_closed) = mpsc::channel(1);
        Background {
            epoch,
            epoch_closed,
        }
    }

    /// Sends `releases` (each on its nodes, `None`: every node; a batch per node) in a task
    /// of its own.
    pub fn release(&self, nodes: &Nodes, releases: Vec<Targeted>) {
        let nodes = nodes.clone();
        self.spawn(async move { release(&nodes, releases).await });
    }

    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let epoch = self.epoch.clone();
        tokio::spawn(async move {
            work.await;
            drop(epoch);
        });
    }

    /// Answers `done` once every task spawned so far has finished.
    pub fn flush(&mut self, done: oneshot::Sender<()>) {
        let (epoch, epoch_closed) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.epoch, epoch));
        let mut closed = std::mem::replace(&mut self.epoch_closed, epoch_closed);
        tokio::spawn(async move {
            // Nobody sends: `recv` returns `None` once every sender of the epoch is gone.
            while closed.recv().await.is_some() {}
            let _ = done.send(());
        });
    }
}

/// Releases queued holds: on each node, the holds meant for it, a chunk per call, every node
/// at once. Failures are logged, not retried: such a hold expires with its TTL.
async fn release(nodes: &Nodes, releases: Vec<Targeted>) {
    let releases = &releases;
    futures_util::future::join_all((0..nodes.len()).map(|index| async move {
        let node = nodes.get(index);
        let mine: Vec<&Arc<dyn ReleaseOp>> = releases
            .iter()
            .filter(|(_, on)| on.as_ref().is_none_or(|on| on.contains(&index)))
            .map(|(hold, _)| hold)
            .collect();
        for chunk in mine.chunks(MAX_BATCH) {
            let outcome = batch::run(
                node,
                chunk.len(),
                node.command_timeout(),
                |i| chunk[i].release_script(),
                |i| chunk[i].slot(),
                |i, call| chunk[i].add_release(call),
            )
            .await;
            if let Err(error) = outcome {
                tracing::warn!(
                    node = nodes.name(index),
                    %error,
                    holds = chunk.len(),
                    first = chunk[0].name(),
                    "background release failed; the holds expire with their TTL"
                );
            }
        }
    }))
    .await;
}
