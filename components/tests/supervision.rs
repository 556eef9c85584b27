//! Supervision on tokio's paused clock: restarts (one-for-all, one-for-one), temporary children,
//! giving up within the retries, hangs, and the exit decision.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Greeter, World, description, registry};
use components::{DynamicContainer, Error, Fatal, Lifetime, Supervisor, Tree};
use serde_json::json;
use tokio::time::Instant;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn greeter(name: &str) -> serde_json::Value {
    json!({"module": "test#greeter", "name": name, "env": {"message": name, "number": 0}})
}

#[tokio::test(start_paused = true)]
async fn a_randomly_failing_tree_is_kept_alive_and_whole() -> TestResult {
    let world = World::seeded(0x5eed);
    let flaky = |name: &str| {
        json!({"module": "test#flaky", "name": name,
        "env": {"create_per_mille": 100, "break_per_mille": 30}})
    };
    let value = json!({"module": "components#static", "name": "top",
    "env": {"interval": 100, "max_retries": 20, "retry_delay": 10, "max_hang_retries": 5, "die_delay": -1},
    "components": [
        flaky("a"),
        {"module": "components#static", "name": "b", "components": [flaky("b1"), greeter("b2")]},
        {"module": "components#dynamic", "name": "c", "components": [flaky("c1"), flaky("c2")]}
    ]});
    // Creation itself may fail at random: retry it like a process manager would.
    let mut tree = None;
    for _ in 0..20 {
        if let Ok(t) = Tree::create(&description(value.clone())?, registry(&world)?).await {
            tree = Some(t);
            break;
        }
    }
    let tree = tree.ok_or("the tree never came up")?;
    let supervisor = Supervisor::new(tree.clone());

    // 300 checkups of virtual time.
    supervisor
        .run(tokio::time::sleep(Duration::from_secs(30)))
        .await?;

    assert!(
        world.breaks() >= 10,
        "only {} failures: the test proves nothing",
        world.breaks()
    );
    assert!(
        world.created("top/a") > 1 && world.created("top/b/b1") > 1,
        "nothing was restarted"
    );
    // One-for-all: b2 never fails itself but is restarted with b1.
    assert!(world.created("top/b/b2") > 1);
    // Whole: every component is there, in order.
    let context = tree.context();
    assert_eq!(context.names(), ["a", "b", "c"]);
    assert_eq!(context.child("b").ok_or("no b")?.names(), ["b1", "b2"]);
    assert_eq!(context.child("c").ok_or("no c")?.names(), ["c1", "c2"]);
    tree.shutdown().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_supervisor_gives_up_on_an_unrecoverable_child_within_its_retries() -> TestResult {
    let world = World::new();
    let value = json!({"module": "components#static", "name": "top",
        "env": {"interval": 100, "max_retries": 3, "retry_delay": 50, "max_hang_retries": 10, "die_delay": -1},
        "components": [greeter("ok"), {"module": "test#fragile", "name": "bad", "env": {"healthy_checkups": 2}}]});
    let tree = Tree::create(&description(value)?, registry(&world)?).await?;
    let start = Instant::now();

    let outcome = Supervisor::new(tree.clone())
        .run(futures::future::pending())
        .await;

    let Err(Fatal {
        error,
        exit_process,
    }) = outcome
    else {
        return Err("the supervisor should have given up".into());
    };
    assert!(!exit_process, "a negative die_delay does not exit");
    // Third checkup fails (t = 300 ms); four attempts, 50 ms apart.
    assert_eq!(start.elapsed(), Duration::from_millis(300 + 3 * 50));
    assert_eq!(world.created("top/bad"), 1 + 4);
    assert_eq!(
        world.created("top/ok"),
        1 + 4,
        "one-for-all recreates the healthy sibling too"
    );
    match &error {
        Error::GaveUp {
            path,
            attempts: 4,
            source,
        } => {
            assert_eq!(path.to_string(), "top");
            assert!(
                matches!(**source, Error::Create { ref path, .. } if path.to_string() == "top/bad")
            );
        }
        other => return Err(format!("expected GaveUp, got {other:?}").into()),
    }
    let chain = error.chain();
    assert!(
        chain.contains("top/bad") && chain.contains("cannot open the disk"),
        "{chain}"
    );
    tree.shutdown().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_unrecoverable_failure_exits_after_die_delay() -> TestResult {
    let world = World::new();
    let value = json!({"module": "components#static", "name": "top",
        "env": {"interval": 100, "max_retries": 0, "die_delay": 700},
        "components": [{"module": "test#fragile", "name": "bad", "env": {"healthy_checkups": 0}}]});
    let tree = Tree::create(&description(value)?, registry(&world)?).await?;
    let start = Instant::now();
    let outcome = Supervisor::new(tree).run(futures::future::pending()).await;
    assert!(matches!(
        outcome,
        Err(Fatal {
            exit_process: true,
            ..
        })
    ));
    assert_eq!(start.elapsed(), Duration::from_millis(100 + 700));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_checkup_pending_for_more_than_max_hang_retries_ticks_is_fatal() -> TestResult {
    let world = World::new();
    let value = json!({"module": "components#static", "name": "top",
        "env": {"interval": 100, "max_hang_retries": 2, "die_delay": -1},
        "components": [greeter("fine"), {"module": "test#hanging", "name": "stuck", "env": {"healthy_checkups": 1}}]});
    let tree = Tree::create(&description(value)?, registry(&world)?).await?;
    let start = Instant::now();
    let outcome = Supervisor::new(tree).run(futures::future::pending()).await;
    match outcome {
        Err(Fatal {
            error: Error::Hang { path, ticks, .. },
            exit_process: false,
        }) => {
            assert_eq!((path.to_string().as_str(), ticks), ("top/stuck", 3));
        }
        other => return Err(format!("expected a hang, got {other:?}").into()),
    }
    // Hangs from the checkup at 200 ms: pending at 300, 400 and 500.
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_healthy_tree_runs_until_stopped_even_with_no_hang_tolerance() -> TestResult {
    let world = World::new();
    let value = json!({"module": "components#static", "name": "top",
        "env": {"interval": 100, "max_hang_retries": 0, "die_delay": -1}, "components": [greeter("g")]});
    let tree = Tree::create(&description(value)?, registry(&world)?).await?;
    Supervisor::new(tree.clone())
        .run(tokio::time::sleep(Duration::from_secs(5)))
        .await?;
    assert_eq!(world.created("top/g"), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_static_container_restarts_all_its_children_and_gives_up_after_its_retries() -> TestResult
{
    let world = World::new();
    let value = json!({"module": "components#static", "name": "top", "env": {"max_retries": 2, "retry_delay": 10},
        "components": [greeter("a"), greeter("b"), greeter("c")]});
    let tree = Tree::create(&description(value)?, registry(&world)?).await?;
    tree.checkup().await?;
    assert_eq!(world.created("top/a"), 1, "a healthy tree is left alone");

    world.set_failing("top/b", true);
    let start = Instant::now();
    match tree.checkup().await {
        Err(Error::GaveUp {
            path,
            attempts: 3,
            source,
        }) => {
            assert_eq!(path.to_string(), "top");
            assert!(
                matches!(*source, Error::Checkup { ref path, .. } if path.to_string() == "top/b")
            );
        }
        other => return Err(format!("expected GaveUp, got {other:?}").into()),
    }
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(2 * 10),
        "retries are retry_delay apart"
    );
    for name in ["a", "b", "c"] {
        assert_eq!(
            world.created(&format!("top/{name}")),
            1 + 3,
            "one-for-all: {name}"
        );
    }
    // Each failed attempt was shut down again, last created first.
    assert_eq!(world.events("shutdown ").len(), 3 * 4);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_static_container_repairs_a_failed_child_by_restarting_its_siblings() -> TestResult {
    let world = World::new();
    let value = json!({"module": "components#static", "name": "top", "env": {"retry_delay": 10},
        "components": [greeter("a"), {"module": "components#static", "name": "s", "components": [greeter("s1"), greeter("s2")]}]});
    let tree = Tree::create(&description(value)?, registry(&world)?).await?;
    let old_s1 = tree
        .context()
        .child("s")
        .and_then(|s| s.get::<Greeter>("s1"))
        .ok_or("no s1")?;

    // Fails its checkup, then the one right after the first restart.
    world.fail_next("top/s/s2", 2);
    tree.checkup().await?;

    assert_eq!(world.created("top/s/s2"), 3);
    assert_eq!(
        world.created("top/s/s1"),
        3,
        "one-for-all restarted the healthy sibling"
    );
    assert_eq!(
        world.created("top/a"),
        1,
        "the restart stays inside the failed container"
    );
    let new_s1 = tree
        .context()
        .child("s")
        .and_then(|s| s.get::<Greeter>("s1"))
        .ok_or("no s1")?;
    assert!(!Arc::ptr_eq(&old_s1, &new_s1));
    assert_eq!(
        tree.context().child("s").ok_or("no s")?.names(),
        ["s1", "s2"]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_dynamic_container_restarts_one_child_and_never_restarts_temporary_ones() -> TestResult {
    let world = World::new();
    let value = json!({"module": "components#static", "name": "top", "env": {"max_retries": 2, "retry_delay": 10},
        "components": [greeter("before"), {"module": "components#dynamic", "name": "cas", "components": [greeter("p1")]}]});
    let tree = Tree::create(&description(value)?, registry(&world)?).await?;
    let cas = tree
        .context()
        .get::<DynamicContainer>("cas")
        .ok_or("no dynamic container")?;
    cas.add(description(greeter("t1"))?, Lifetime::Temporary)
        .await?;
    cas.add(description(greeter("t2"))?, Lifetime::Temporary)
        .await?;
    cas.add(description(greeter("p2"))?, Lifetime::Permanent)
        .await?;
    assert!(matches!(
        cas.add(description(greeter("t1"))?, Lifetime::Temporary)
            .await,
        Err(Error::DuplicateName { .. })
    ));
    assert_eq!(cas.names(), ["p1", "t1", "t2", "p2"]);

    world.set_failing("top/cas/t1", true);
    // p2 fails its first checkup after the restart too, then is repaired.
    world.fail_next("top/cas/p2", 2);
    tree.checkup().await?;

    assert_eq!(
        cas.names(),
        ["p1", "t2", "p2"],
        "t1 removed, p2 restarted in its place"
    );
    assert_eq!(
        world.created("top/cas/t1"),
        1,
        "a temporary child is never restarted"
    );
    assert_eq!(
        world.created("top/cas/p2"),
        3,
        "one restart failed, the retry succeeded"
    );
    assert_eq!(
        (world.created("top/cas/p1"), world.created("top/cas/t2")),
        (1, 1),
        "one-for-one"
    );
    assert_eq!(world.created("top/before"), 1);
    assert!(world.events("shutdown ").contains(&"top/cas/t1".to_owned()));

    // Removing at run time shuts the child down.
    assert!(cas.remove("t2").await?);
    assert!(!cas.remove("t2").await?);
    assert_eq!(cas.names(), ["p1", "p2"]);

    // Even under a supervisor, a failing temporary child is only removed.
    cas.add(description(greeter("t3"))?, Lifetime::Temporary)
        .await?;
    world.set_failing("top/cas/t3", true);
    let supervisor = Supervisor::new(tree.clone());
    supervisor
        .run(tokio::time::sleep(Duration::from_secs(10)))
        .await?;
    assert_eq!(world.created("top/cas/t3"), 1);
    assert_eq!(cas.names(), ["p1", "p2"]);

    tree.shutdown().await?;
    assert!(matches!(
        cas.add(description(greeter("late"))?, Lifetime::Temporary)
            .await,
        Err(Error::Closed { .. })
    ));
    Ok(())
}
