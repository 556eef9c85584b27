//! Loading from files: a hierarchy with links, a template delta found in a list of directories,
//! the caller's spec, environment properties of every JSON kind, and the `components check`
//! command.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{Finder, Greeter, World, registry};
use components::{Delta, Description, Error, Loader, Tree};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn write(dir: &Path, name: &str, value: &Value) -> std::io::Result<()> {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(value)?)
}

fn base() -> Value {
    json!({"module": "test#group", "name": "top", "env": {"greeting": "hi", "n": 7},
    "components": [
        {"module": "test#greeter", "name": "g1", "env": {"message": "$._.env.greeting", "number": 1}},
        {"module": "test#group", "name": "h2", "env": {"n": 99, "label": "two"}, "components": [
            {"module": "test#greeter", "name": "h21", "env": {"message": "deep", "number": "$._.env.n"}},
            {"module": "test#finder", "name": "h22", "env": {"sibling": "h21", "top": "g1"}}
        ]},
        {"module": "test#greeter", "name": "g3", "env": {"message": "last", "number": 3}}
    ]})
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn names(d: &Description) -> Vec<&str> {
    d.components.iter().map(|c| c.name.as_str()).collect()
}

#[tokio::test]
async fn a_three_level_hierarchy_with_links_loads_and_builds() -> TestResult {
    let dir = tempfile::tempdir()?;
    write(dir.path(), "host.json", &base())?;
    let description = Loader::new(dir.path().join("host.json"))
        .environment(no_env())
        .load()?;
    assert_eq!(description.components[0].env["message"], json!("hi"));
    let h21 = description.find(&["h2", "h21"]).ok_or("no h21")?;
    assert_eq!(
        h21.env["number"],
        json!(7),
        "the top's n, not the parent's 99"
    );

    let world = World::new();
    let tree = Tree::create(&description, registry(&world)?).await?;
    let h2 = tree.context().child("h2").ok_or("no h2")?;
    assert_eq!(h2.get::<Greeter>("h21").ok_or("no h21")?.greet(), "deep #7");
    assert_eq!(h2.get::<Finder>("h22").ok_or("no h22")?.top_says, "hi #1");
    tree.shutdown().await?;
    Ok(())
}

#[test]
fn a_template_delta_in_a_second_directory_replaces_touches_adds_and_deletes() -> TestResult {
    let (base_dir, empty, deltas, later) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    write(base_dir.path(), "host.json", &base())?;
    write(
        base_dir.path(),
        "host++.json",
        &json!({"env": {"beside": true}}),
    )?;
    write(
        later.path(),
        "host++.json",
        &json!({"env": {"later": true}}),
    )?;
    write(
        deltas.path(),
        "host++.json",
        &json!({
            "name": "top",
            "env": {"greeting": "hello", "extra": [1, 2]},
            "components": [
                {"name": "g1", "module": "test#finder", "env": {"sibling": "x", "top": "y"}},
                {"name": "h2", "env": {"label": null}, "components": [
                    {"name": "h22", "module": null},
                    {"name": "h23", "module": "test#greeter", "env": {"message": "new", "number": "$._.env.n"}}
                ]},
                {"name": "added", "module": "test#greeter", "env": {"message": "$._.env.greeting", "number": 4}},
                {"name": "g3", "module": null}
            ]
        }),
    )?;
    let loader = Loader::new(base_dir.path().join("host.json"))
        .dir(empty.path())
        .dir(deltas.path())
        .dir(later.path())
        .environment(no_env());
    assert_eq!(
        loader.delta_file(),
        Some(deltas.path().join("host++.json")),
        "the first dir that has it wins"
    );
    let d = loader.load()?;

    assert_eq!(names(&d), ["g1", "h2", "added"]);
    assert!(
        d.env.get("beside").is_none() && d.env.get("later").is_none(),
        "one delta only"
    );
    assert_eq!(d.env["greeting"], json!("hello"));
    assert_eq!(d.env["n"], json!(7), "env merged key by key");
    // Replaced: new module, env merged over the old one.
    assert_eq!(d.components[0].module, "test#finder");
    assert_eq!(d.components[0].env["number"], json!(1));
    // Touched: a null overrides the value but keeps the key.
    let h2 = &d.components[1];
    assert_eq!(
        (h2.module.as_str(), &h2.env["label"], &h2.env["n"]),
        ("test#group", &Value::Null, &json!(99))
    );
    // h23 takes the deleted h22's place; links resolve after the merge.
    assert_eq!(names(h2), ["h21", "h23"]);
    assert_eq!(h2.components[1].env["number"], json!(7));
    assert_eq!(d.components[2].env["message"], json!("hello"));

    // Without directories the delta beside the base applies.
    let beside = Loader::new(base_dir.path().join("host.json"))
        .environment(no_env())
        .load()?;
    assert_eq!(beside.env["beside"], json!(true));
    Ok(())
}

#[test]
fn only_the_spec_renames_the_top_and_errors_name_the_delta_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    write(dir.path(), "host.json", &base())?;
    let spec = Delta::from_value(
        &json!({"name": "host-1", "env": {"n": 8},
        "components": [{"name": "g3", "module": null}]}),
        "<spec>",
    )?;
    let d = Loader::new(dir.path().join("host.json"))
        .spec(spec)
        .environment(no_env())
        .load()?;
    assert_eq!((d.name.as_str(), names(&d)), ("host-1", vec!["g1", "h2"]));
    assert_eq!(
        d.find(&["h2", "h21"]).map(|c| &c.env["number"]),
        Some(&json!(8))
    );

    write(dir.path(), "host++.json", &json!({"name": "renamed"}))?;
    let err = match Loader::new(dir.path().join("host.json"))
        .environment(no_env())
        .load()
    {
        Err(e) => e,
        Ok(_) => return Err("a delta renamed the top".into()),
    };
    let text = err.to_string();
    assert!(
        text.contains("host++.json") && text.contains("`name`"),
        "{text}"
    );
    Ok(())
}

#[test]
fn errors_name_the_file_the_component_path_and_the_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    write(dir.path(), "host.json", &base())?;
    write(
        dir.path(),
        "host++.json",
        &json!({"components": [{"name": "h2", "components": [
        {"name": "h21", "env": "not an object"}]}]}),
    )?;
    match Loader::new(dir.path().join("host.json")).load() {
        Err(Error::Invalid {
            file, path, key, ..
        }) => {
            assert!(file.ends_with("host++.json"), "{file}");
            assert_eq!(
                (path.to_string(), key),
                ("top/h2/h21".to_owned(), "env".to_owned())
            );
        }
        other => return Err(format!("expected Invalid, got {other:?}").into()),
    }
    std::fs::remove_file(dir.path().join("host++.json"))?;
    let mut broken_link = base();
    broken_link["components"][1]["components"][0]["env"]["number"] = json!("$._.env.missing");
    write(dir.path(), "host.json", &broken_link)?;
    let text = match Loader::new(dir.path().join("host.json")).load() {
        Err(e) => e.to_string(),
        Ok(_) => return Err("a broken link loaded".into()),
    };
    assert!(
        text.contains("host.json") && text.contains("top/h2/h21") && text.contains("env.number"),
        "{text}"
    );
    assert!(matches!(
        Loader::new(dir.path().join("absent.json")).load(),
        Err(Error::Read { .. })
    ));
    Ok(())
}

#[test]
fn environment_properties_of_every_json_kind_and_the_string_fallback() -> TestResult {
    let dir = tempfile::tempdir()?;
    write(
        dir.path(),
        "host.json",
        &json!({"module": "components#static", "name": "top",
        "env": {"port": "process.env.LOAD_TEST_PORT||80", "n": "process.env.LOAD_TEST_UNSET||7"},
        "components": [{"module": "test#greeter", "name": "g", "env": {
            "number": "process.env.LOAD_TEST_NUMBER",
            "float": "process.env.LOAD_TEST_FLOAT",
            "flag": "process.env.LOAD_TEST_FLAG||false",
            "nothing": "process.env.LOAD_TEST_NULL",
            "text": "process.env.LOAD_TEST_TEXT",
            "quoted": "process.env.LOAD_TEST_QUOTED",
            "list": ["process.env.LOAD_TEST_LIST", "process.env.LOAD_TEST_UNSET"],
            "object": {"inner": "process.env.LOAD_TEST_OBJECT", "gone": "process.env.LOAD_TEST_UNSET"},
            "absent": "process.env.LOAD_TEST_UNSET",
            "default_text": "process.env.LOAD_TEST_UNSET||  just words  ",
            "linked": "$._.env.port"
        }}]}),
    )?;
    let environment: BTreeMap<String, String> = [
        ("LOAD_TEST_PORT", "8080"),
        ("LOAD_TEST_NUMBER", " 42 "),
        ("LOAD_TEST_FLOAT", "2.5"),
        ("LOAD_TEST_FLAG", "true"),
        ("LOAD_TEST_NULL", "null"),
        ("LOAD_TEST_TEXT", "  hello world "),
        ("LOAD_TEST_QUOTED", "\"007\""),
        ("LOAD_TEST_LIST", "[1, \"two\", {\"three\": 3}]"),
        ("LOAD_TEST_OBJECT", "{\"a\": [true]}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let d = Loader::new(dir.path().join("host.json"))
        .environment(environment)
        .load()?;
    assert_eq!(Value::Object(d.env.clone()), json!({"port": 8080, "n": 7}));
    assert_eq!(
        Value::Object(d.components[0].env.clone()),
        json!({
            "number": 42, "float": 2.5, "flag": true, "nothing": null, "text": "hello world",
            "quoted": "007", "list": [[1, "two", {"three": 3}], null], "object": {"inner": {"a": [true]}},
            "default_text": "just words", "linked": 8080
        })
    );
    Ok(())
}

fn check(args: &[&std::ffi::OsStr]) -> std::io::Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_components"))
        .arg("check")
        .args(args)
        .output()
}

#[test]
fn the_check_command_prints_the_resolved_description_or_the_error() -> TestResult {
    let (dir, deltas) = (tempfile::tempdir()?, tempfile::tempdir()?);
    write(dir.path(), "host.json", &base())?;
    write(
        deltas.path(),
        "host++.json",
        &json!({"components": [{"name": "g3", "module": null}]}),
    )?;
    write(dir.path(), "spec.json", &json!({"name": "host-1"}))?;
    let (file, spec) = (dir.path().join("host.json"), dir.path().join("spec.json"));

    let out = check(&[
        file.as_os_str(),
        "--dir".as_ref(),
        deltas.path().as_os_str(),
        "--spec".as_ref(),
        spec.as_os_str(),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout)?;
    let expected = Loader::new(&file)
        .dir(deltas.path())
        .spec_file(&spec)
        .load()?;
    assert_eq!(printed, expected.to_value());
    assert_eq!(printed["name"], json!("host-1"));
    assert_eq!(printed["components"][0]["env"]["message"], json!("hi"));

    let mut bad = base();
    bad["components"][1]["components"][0]["module"] = json!(3);
    write(dir.path(), "host.json", &bad)?;
    let out = check(&[file.as_os_str()])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("host.json")
            && stderr.contains("top/h2/h21")
            && stderr.contains("`module`"),
        "{stderr}"
    );

    let help = Command::new(env!("CARGO_BIN_EXE_components"))
        .args(["check", "--help"])
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--dir") && help.contains("--spec") && help.contains("++.json"),
        "{help}"
    );
    Ok(())
}
