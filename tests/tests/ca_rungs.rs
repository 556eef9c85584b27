//! The last rungs of the error ladder (DESIGN.md §9.2), on a host run in this process against a
//! real 3-node Spine, with turn plugins that fail on purpose:
//! - a plugin whose commit fails: the turn committed but nothing of it is released; the caller
//!   gets the retryable `commit` error, the activation stops, and the next one loads the
//!   committed turn (so a retry sees it);
//! - a plugin whose abort fails: the activation stops (the caller gets `shut_down`, retryable),
//!   and the next activation starts from the last checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ca_client::ErrorCode;
use ca_runtime::apps::counter::Counter;
use ca_runtime::plugins::Plugins;
use ca_runtime::turn::{Ids, TurnPlugin};
use ca_runtime::{App, CaError, Host, HostConfig};
use serde_json::{Value, json};
use sharing_map::AppName;
use spine_tests::{Cluster, ClusterOpts};

/// Fails its commit or its abort while armed (once: it disarms itself).
#[derive(Debug, Default)]
struct Faulty {
    fail_commit: AtomicBool,
    fail_abort: AtomicBool,
}

impl TurnPlugin for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn abort(&self, _ids: Ids<'_>) -> Result<(), String> {
        if self.fail_abort.swap(false, Ordering::SeqCst) {
            return Err("the abort broke on purpose".into());
        }
        Ok(())
    }
    fn committed(&self, _ids: Ids<'_>, _state: &Value) -> Result<(), String> {
        if self.fail_commit.swap(false, Ordering::SeqCst) {
            return Err("the release broke on purpose".into());
        }
        Ok(())
    }
}

async fn call(host: &Host, method: &str, args: Value) -> Result<Value, CaError> {
    let calls = vec![(method.to_string(), args.to_string())];
    host.call("demo-counter", "alice-phone", calls, None)
        .await
        .map(|r| r.result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_or_abort_stops_the_activation_and_the_next_one_resumes()
-> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let faulty = Arc::new(Faulty::default());
    let app: Arc<dyn App> = Arc::new(Counter::new(Counter::default_version()));
    let host = Host::new(
        cluster.client()?,
        None,
        vec![(AppName::parse("demo-counter")?, app)],
        Plugins::default(),
        vec![faulty.clone() as Arc<dyn TurnPlugin>],
        None,
        HostConfig {
            idle: Duration::from_secs(60),
            ..HostConfig::default()
        },
    );
    assert_eq!(call(&host, "increment", json!([])).await?, json!(1));
    assert_eq!(host.active(), 1);

    // The commit rung: the checkpoint lands, its release fails.
    faulty.fail_commit.store(true, Ordering::SeqCst);
    let e = call(&host, "increment", json!([]))
        .await
        .expect_err("commit rung");
    assert_eq!(e.code, ErrorCode::Commit, "{e}");
    assert!(e.message.contains("the release broke on purpose"), "{e}");
    spine_tests::eventually(
        "the activation to stop",
        Duration::from_secs(10),
        || async { (host.active() == 0).then_some(()) },
    )
    .await?;
    // The next activation loads what committed: the failed call's increment is there.
    assert_eq!(call(&host, "get", json!([])).await?, json!(2));

    // The abort rung: a failed turn whose abort breaks stops the activation.
    faulty.fail_abort.store(true, Ordering::SeqCst);
    let e = call(&host, "fail", json!(["no"]))
        .await
        .expect_err("abort rung");
    assert_eq!(e.code, ErrorCode::ShutDown, "{e}");
    assert!(e.message.contains("the abort broke on purpose"), "{e}");
    spine_tests::eventually(
        "the activation to stop",
        Duration::from_secs(10),
        || async { (host.active() == 0).then_some(()) },
    )
    .await?;
    assert_eq!(call(&host, "increment", json!([])).await?, json!(3));
    Ok(())
}
