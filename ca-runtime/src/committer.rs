//! Group commit (DESIGN.md §9.2): checkpoints of many CAs go to the Spine together, one
//! `UpdateBatch` (one Raft entry) per batch, each update atomic on its own with its own result.
//!
//! Checkpoints queue while every batch slot is busy, so the batches grow with the load: one CA
//! alone gets a one-update batch at once; thousands share a few large ones.

use std::sync::Arc;
use std::time::Instant;

use sharing_map::{AppName, ChangeSet};
use spine_client::{Client, ClientError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::Metrics;

/// Why a checkpoint did not commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// A compare-and-swap failed: another activation committed first.
    #[error("{0}")]
    Conflict(String),
    /// The Spine refused the update (authorization, limits).
    #[error("{0}")]
    Refused(String),
    /// The Spine did not answer in time; the update may have landed.
    #[error("{0}")]
    Unavailable(String),
}

/// Bounds of the committer.
#[derive(Clone, Copy, Debug)]
pub struct CommitterConfig {
    /// Most updates in one batch.
    pub max_batch: usize,
    /// Most batches in flight at once.
    pub max_in_flight: usize,
}

impl Default for CommitterConfig {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            max_in_flight: 8,
        }
    }
}

struct Job {
    app: AppName,
    change_sets: Vec<ChangeSet>,
    reply: oneshot::Sender<Result<Vec<u64>, CommitError>>,
}

/// The handle CAs commit through.
#[derive(Clone, Debug)]
pub struct Committer {
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Job({} change sets of {})",
            self.change_sets.len(),
            self.app
        )
    }
}

impl Committer {
    /// Starts the batching loop on the current runtime.
    pub fn start(client: Client, config: CommitterConfig, metrics: Arc<Metrics>) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, config, metrics, rx));
        Self { jobs }
    }

    /// Sends one update (the change sets of one writer); the receiver gets its versions or its
    /// error once the batch it joined is answered.
    pub fn submit(
        &self,
        app: AppName,
        change_sets: Vec<ChangeSet>,
    ) -> oneshot::Receiver<Result<Vec<u64>, CommitError>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            app,
            change_sets,
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job) {
            let _ = job.reply.send(Err(CommitError::Unavailable(
                "the committer stopped".into(),
            )));
        }
        rx
    }
}

async fn run(
    client: Client,
    config: CommitterConfig,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    loop {
        // Wait for a slot first: while all are busy, checkpoints pile up into the next batch.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let client = client.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            metrics.batch_size.observe(batch.len() as f64);
            let updates: Vec<(AppName, Vec<ChangeSet>)> = batch
                .iter()
                .map(|j| (j.app.clone(), j.change_sets.clone()))
                .collect();
            let answer = client.update_batch(&updates).await;
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            match answer {
                Ok(results) => {
                    for (job, result) in batch.into_iter().zip(results) {
                        let _ = job.reply.send(result.map_err(commit_error));
                    }
                }
                Err(e) => {
                    let e = match commit_error(e) {
                        CommitError::Conflict(m) => CommitError::Unavailable(m),
                        other => other,
                    };
                    for job in batch {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

fn commit_error(e: ClientError) -> CommitError {
    match e.code() {
        tonic::Code::FailedPrecondition => CommitError::Conflict(e.to_string()),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
            CommitError::Unavailable(e.to_string())
        }
        _ => CommitError::Refused(e.to_string()),
    }
}
