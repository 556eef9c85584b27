//! Life cycle: creation in description order with children before their parent, lookups by
//! name, reverse-order shutdown that unregisters, and a second shutdown that does nothing.

mod common;

use common::{Finder, Greeter, World, description, registry};
use components::{Error, Tree};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn three_levels() -> serde_json::Value {
    json!({"module": "test#group", "name": "top", "env": {"greeting": "hi", "n": 7},
    "components": [
        {"module": "test#greeter", "name": "g1", "env": {"message": "$._.env.greeting", "number": 1}},
        {"module": "test#group", "name": "h2", "env": {"n": 99}, "components": [
            {"module": "test#greeter", "name": "h21", "env": {"message": "deep", "number": "$._.env.n"}},
            {"module": "test#finder", "name": "h22", "env": {"sibling": "h21", "top": "g1"}}
        ]},
        {"module": "test#greeter", "name": "g3", "env": {"message": "last", "number": 3}}
    ]})
}

#[tokio::test]
async fn creation_is_sequential_children_first_and_shutdown_is_its_reverse() -> TestResult {
    let world = World::new();
    let resolved = components::resolve(
        &description(three_levels())?,
        &components::ProcessEnv,
        "<test>",
    )?;
    let tree = Tree::create(&resolved, registry(&world)?).await?;

    let created = world.events("create ");
    assert_eq!(
        created,
        [
            "top/g1",
            "top/h2/h21",
            "top/h2/h22",
            "top/h2",
            "top/g3",
            "top"
        ]
    );

    // Lookups: a sibling created before, the top from any depth, and concrete types.
    let h2 = tree.context().child("h2").ok_or("no h2")?;
    let finder = h2.get::<Finder>("h22").ok_or("no h22")?;
    assert_eq!(
        finder.sibling_says, "deep #7",
        "links go to the top's env, not the parent's"
    );
    assert_eq!(finder.top_says, "hi #1");
    assert!(
        tree.context().get::<Finder>("g1").is_none(),
        "g1 is a Greeter"
    );
    assert_eq!(tree.context().names(), ["g1", "h2", "g3"]);
    assert!(tree.top::<common::Group>().is_some());

    tree.shutdown().await?;
    let shut = world.events("shutdown ");
    let mut reversed = created.clone();
    reversed.reverse();
    assert_eq!(shut, reversed);

    // Unregistered, and a second shutdown is a no-op.
    assert!(tree.context().names().is_empty());
    assert!(h2.get::<Greeter>("h21").is_none());
    assert!(tree.top::<common::Group>().is_none());
    let log_before = world.log();
    tree.shutdown().await?;
    assert_eq!(world.log(), log_before);
    Ok(())
}

#[tokio::test]
async fn a_failed_creation_names_the_component_and_shuts_down_what_was_built() -> TestResult {
    let world = World::new();
    let mut value = three_levels();
    value["components"][1]["components"][1] = json!({"module": "test#nope", "name": "bad"});
    let resolved = components::resolve(&description(value)?, &components::ProcessEnv, "<test>")?;
    match Tree::create(&resolved, registry(&world)?).await {
        Err(Error::UnknownModule { path, module }) => {
            assert_eq!(
                (path.to_string().as_str(), module.as_str()),
                ("top/h2/bad", "test#nope")
            );
        }
        other => return Err(format!("expected UnknownModule, got {other:?}").into()),
    }
    assert_eq!(world.events("create "), ["top/g1", "top/h2/h21"]);
    assert_eq!(world.events("shutdown "), ["top/h2/h21", "top/g1"]);
    Ok(())
}

#[tokio::test]
async fn a_factory_error_says_which_component_and_module() -> TestResult {
    let world = World::new();
    let value = json!({"module": "components#static", "name": "top", "components": [
        {"module": "test#greeter", "name": "g", "env": {"message": "no number"}}
    ]});
    let err = match Tree::create(&description(value)?, registry(&world)?).await {
        Err(e) => e,
        Ok(_) => return Err("expected a factory error".into()),
    };
    assert!(matches!(&err, Error::Create { path, module, .. }
        if path.to_string() == "top/g" && module == "test#greeter"));
    assert!(err.chain().contains("env.number"), "{}", err.chain());
    Ok(())
}

#[tokio::test]
async fn a_finder_created_before_its_sibling_cannot_see_it() -> TestResult {
    let world = World::new();
    let value = json!({"module": "components#static", "name": "top", "components": [
        {"module": "test#greeter", "name": "g1", "env": {"message": "m", "number": 1}},
        {"module": "test#finder", "name": "early", "env": {"sibling": "late", "top": "g1"}},
        {"module": "test#greeter", "name": "late", "env": {"message": "m", "number": 2}}
    ]});
    let result = Tree::create(&description(value)?, registry(&world)?).await;
    assert!(
        matches!(result, Err(Error::Create { ref path, .. }) if path.to_string() == "top/early")
    );
    Ok(())
}
