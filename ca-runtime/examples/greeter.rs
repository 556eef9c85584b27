//! A host binary with an app of its own: how a Rust app is written and served (DESIGN.md §9.10).
//!
//! The app, `Greeter`, greets people and remembers how often it greeted each (its state, one key
//! per person, checkpointed in the Spine with every turn); `greet` also records an intent for the
//! `log` plugin, carried out only after the turn committed. The host is `ca-runtime/host.json`
//! with one more app component, built from the runtime's factories plus this app's.
//!
//! With `spine dev` running (the Spine alone), in its directory (flags `--spine A,B,C` and
//! `--listen ADDR` as `ca-host serve`'s, other settings from `CA_*` variables):
//!
//! ```sh
//! cargo run -p ca-runtime --example greeter
//! ca call demo-greeter alice-phone greet bob       # "hello bob (1)"
//! ca call demo-greeter alice-phone greet bob       # "hello bob (2)"
//! ca call demo-greeter alice-phone greeted         # {"bob": 2}
//! ```

use std::sync::Arc;

use ca_runtime::app::{App, Cx, MethodError, MethodResult, arg};
use ca_runtime::assembly::{self, AppPart, DEFAULT_HOST_JSON};
use components::{BoxError, Delta, Description, FactoryArgs, ProcessEnv, Rename, merge, resolve};
use semver::Version;
use serde_json::{Value, json};
use sharing_map::AppName;

/// Greets, and counts greetings per person.
#[derive(Debug)]
struct Greeter;

impl App for Greeter {
    fn state_version(&self) -> Version {
        Version::new(1, 0, 0)
    }

    fn call(&self, cx: &mut Cx<'_>, method: &str, args: &[Value]) -> MethodResult<Value> {
        match method {
            "greet" => {
                let name: String = arg(args, 0, "name")?;
                if name.is_empty() {
                    // An application error: the turn is rolled back, the caller gets this text.
                    return Err(MethodError::App("greet whom?".into()));
                }
                let times = cx.state.get(&name).and_then(Value::as_u64).unwrap_or(0) + 1;
                cx.state.insert(name.clone(), json!(times));
                cx.intent("log", json!({"greeted": name, "times": times}));
                Ok(json!(format!("hello {name} ({times})")))
            }
            "greeted" => Ok(Value::Object(cx.state.clone())),
            other => Err(MethodError::UnknownMethod(other.to_string())),
        }
    }
}

/// The runtime's factories, plus `greeter#app`.
fn registry() -> Result<components::Registry, BoxError> {
    let mut r = assembly::registry()?;
    r.register("greeter#app", |a: FactoryArgs| async move {
        Ok::<_, BoxError>(AppPart {
            name: AppName::parse(a.name())?,
            app: Arc::new(Greeter),
        })
    })?;
    Ok(r)
}

/// `host.json` with the greeter app added after the counter, served by the host too; `--spine
/// A,B,C` and `--listen ADDR` as in `ca-host serve`.
fn description(spine: Option<&str>, listen: Option<&str>) -> Result<Description, BoxError> {
    let base = Description::from_json(DEFAULT_HOST_JSON, "ca-runtime/host.json")?;
    let mut delta = json!({
        "name": base.name,
        "env": {},
        "components": [
            {"module": "greeter#app", "name": "demo-greeter",
             "description": "The greeter example app."},
            {"name": "host", "env": {"apps": ["demo-counter", "demo-greeter"]}}
        ]
    });
    if let Some(listen) = listen {
        delta["env"]["listen"] = json!(listen);
    }
    if let Some(spine) = spine {
        delta["components"]
            .as_array_mut()
            .ok_or("the delta's components")?
            .push(json!({"name": "spine", "env": {"endpoints": spine}}));
    }
    let delta = Delta::from_value(&delta, "greeter")?;
    let merged = merge(&base, &delta, "greeter", Rename::Forbidden)?;
    Ok(resolve(&merged, &ProcessEnv, "greeter host")?)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let description = description(flag("--spine"), flag("--listen"))?;
    assembly::run(&description, registry()?, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_greeter_host_serves_both_apps() -> Result<(), BoxError> {
        let d = description(Some("127.0.0.1:1"), Some("127.0.0.1:2"))?;
        let apps = d
            .child("host")
            .and_then(|h| h.env.get("apps"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(apps, json!(["demo-counter", "demo-greeter"]));
        assert!(d.child("demo-greeter").is_some());
        let known: Vec<String> = registry()?.modules().map(str::to_string).collect();
        assert!(known.contains(&"greeter#app".to_string()));
        Ok(())
    }
}
