//! Running spinectl's commands: parse names, call the client, print.

use std::io::Read;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use sharing_map::{AppName, ChangeSet, Entry, MapName, MethodRuntime, Snapshot, UpdateId};
use spine_client::{Client, ClientError, SubscriptionSpec};

use super::args::{
    Cli, ClusterCommand, Command, MapCommand, Output, PutArgs, WriteArgs, parse_value,
};
use super::{load, render};

/// Runs the command the command line names.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut builder = Client::builder(cli.endpoints.clone()).timeout(cli.timeout);
    if let Some(token) = spine_client::resolve_token(cli.token.clone(), cli.token_file.as_deref())?
    {
        builder = builder.token(token);
    }
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    if let Some(ca) = &cli.tls_ca {
        builder = builder.tls_ca(read(ca)?);
    }
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        builder = builder.tls_identity(read(cert)?, read(key)?);
    }
    let client = builder.build()?;
    let out = Printer(cli.output);
    match cli.command {
        Command::Map(command) => {
            let app = AppName::parse(&cli.app)?;
            run_map(&client, &app, out, command).await
        }
        Command::Cluster(command) => run_cluster(&client, out, command).await,
        Command::Acl(command) => {
            let app = AppName::parse(&cli.app)?;
            super::security::run_acl(&client, &app, cli.output, command).await
        }
        Command::Token(command) => super::security::run_token(cli.output, command),
        Command::App(command) => super::app::run_app(&client, &cli.app, cli.output, command).await,
        Command::Load(args) => {
            let app = AppName::parse(&cli.app)?;
            load::run(&client, &app, cli.output, &args).await
        }
    }
}

/// Prints a result as text or JSON, depending on `--output`.
#[derive(Clone, Copy, Debug)]
struct Printer(Output);

impl Printer {
    fn print(self, human: impl FnOnce() -> String, json: impl FnOnce() -> Value) {
        match self.0 {
            Output::Human => println!("{}", human()),
            Output::Json => println!("{}", json()),
        }
    }
}

fn map_name(text: &str) -> anyhow::Result<MapName> {
    Ok(MapName::parse(text)?)
}

fn update_id(write: &WriteArgs) -> anyhow::Result<UpdateId> {
    let text = match &write.update_id {
        Some(id) => id.clone(),
        None => format!("spinectl-{:016x}", rand::random::<u64>()),
    };
    Ok(UpdateId::parse(&text)?)
}

/// Reads a file, or stdin for `-`.
fn read_input(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))
}

/// A JSON object of key -> value, as entries.
fn initial_entries(text: &str, source: &str) -> anyhow::Result<Vec<(Arc<str>, Entry)>> {
    let value: Value =
        serde_json::from_str(text).with_context(|| format!("{source} is not valid JSON"))?;
    let Value::Object(object) = value else {
        bail!("{source} must hold a JSON object of key -> value");
    };
    Ok(object
        .into_iter()
        .map(|(k, v)| (Arc::from(k), Entry::value(v)))
        .collect())
}

/// One change set or an array of them.
fn change_sets(text: &str, source: &str) -> anyhow::Result<Vec<ChangeSet>> {
    let value: Value =
        serde_json::from_str(text).with_context(|| format!("{source} is not valid JSON"))?;
    let parsed = match value {
        Value::Array(items) => items
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<Vec<ChangeSet>, _>>(),
        one => serde_json::from_value(one).map(|cs| vec![cs]),
    };
    let sets = parsed.with_context(|| format!("{source} does not hold change sets"))?;
    if sets.is_empty() {
        bail!("{source} holds no change sets");
    }
    Ok(sets)
}

/// The operations of `map put`.
fn put_ops(put: &PutArgs) -> anyhow::Result<Vec<(Arc<str>, Option<Entry>)>> {
    if let Some(body) = &put.method {
        let [key] = put.pairs.as_slice() else {
            bail!(
                "with --method, give exactly one KEY (got {})",
                put.pairs.len()
            );
        };
        return Ok(vec![(
            Arc::from(key.as_str()),
            Some(Entry::method(put.args.clone(), body.clone())),
        )]);
    }
    if put.pairs.len() % 2 != 0 {
        bail!(
            "expected KEY VALUE pairs, got an odd number of arguments ({}); the last key has no value",
            put.pairs.len()
        );
    }
    Ok(put
        .pairs
        .chunks(2)
        .map(|pair| {
            (
                Arc::from(pair[0].as_str()),
                Some(Entry::value(parse_value(&pair[1]))),
            )
        })
        .collect())
}

/// Applies `ops` to `map`: at exactly `--version` if given, else at the current version with
/// retries on conflicts. Prints the new version.
async fn write(
    client: &Client,
    app: &AppName,
    out: Printer,
    map: &MapName,
    ops: Vec<(Arc<str>, Option<Entry>)>,
    write: &WriteArgs,
) -> anyhow::Result<()> {
    let id = update_id(write)?;
    let version = match write.version {
        Some(at) => {
            let cs = ChangeSet::from_ops(map.clone(), at, id.clone(), ops);
            let versions = client.update(app, vec![cs]).await?;
            versions
                .first()
                .copied()
                .ok_or_else(|| anyhow!("the server returned no version"))?
        }
        None => client.put(app, map, ops, id.clone()).await?,
    };
    out.print(
        || format!("{map} @ version {version}"),
        || json!({"map": map, "version": version, "update_id": id}),
    );
    Ok(())
}

async fn run_map(
    client: &Client,
    app: &AppName,
    out: Printer,
    command: MapCommand,
) -> anyhow::Result<()> {
    match command {
        MapCommand::Create { map, from } => {
            let map = map_name(&map)?;
            let initial = match &from {
                Some(path) => initial_entries(&read_input(path)?, path)?,
                None => Vec::new(),
            };
            let outcome = client.create_map(app, &map, initial).await?;
            out.print(
                || {
                    if outcome.created {
                        format!("created {map} @ version {}", outcome.version)
                    } else {
                        format!(
                            "{map} already exists @ version {} (unchanged)",
                            outcome.version
                        )
                    }
                },
                || json!({"map": map, "version": outcome.version, "created": outcome.created}),
            );
        }
        MapCommand::Get {
            map,
            keys,
            stale_ok,
        } => {
            let map = map_name(&map)?;
            let found = client.get_keys(app, &map, keys, stale_ok).await?;
            out.print(|| render::map_human(&found), || render::map_json(&found));
        }
        MapCommand::Put(put) => {
            let map = map_name(&put.map)?;
            let ops = put_ops(&put)?;
            write(client, app, out, &map, ops, &put.write).await?;
        }
        MapCommand::Rm {
            map,
            keys,
            write: opts,
        } => {
            let map = map_name(&map)?;
            let ops = keys.into_iter().map(|k| (Arc::from(k), None)).collect();
            write(client, app, out, &map, ops, &opts).await?;
        }
        MapCommand::Apply { file } => {
            let sets = change_sets(&read_input(&file)?, &file)?;
            let maps: Vec<MapName> = sets.iter().map(|cs| cs.map().clone()).collect();
            let versions = client.update(app, sets).await?;
            let applied: Vec<(MapName, u64)> = maps.into_iter().zip(versions).collect();
            out.print(
                || {
                    applied
                        .iter()
                        .map(|(m, v)| format!("{m} @ version {v}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
                || {
                    let items: Vec<Value> = applied
                        .iter()
                        .map(|(m, v)| json!({"map": m, "version": v}))
                        .collect();
                    json!({ "applied": items })
                },
            );
        }
        MapCommand::List { prefix, stale_ok } => {
            let maps = client
                .list_maps(app, prefix.as_deref().unwrap_or(""), stale_ok)
                .await?;
            out.print(|| render::maps_human(&maps), || json!({ "maps": maps }));
        }
        MapCommand::Watch { map, prefix, from } => {
            watch(client, app, out, map, prefix, from).await?
        }
        MapCommand::History { map, after } => {
            let map = map_name(&map)?;
            let history = client.history(app, &map, after).await?;
            out.print(
                || render::history_human(map.as_str(), after, &history),
                || json!({"map": map, "after_version": after, "history": history}),
            );
        }
        MapCommand::Call { map, method, args } => {
            let map = map_name(&map)?;
            let found = client.get_map(app, &map, false).await?;
            let args: Vec<Value> = args.iter().map(|a| parse_value(a)).collect();
            let snapshot = Snapshot::new(found, Some(MethodRuntime::shared_default()));
            let result = snapshot.invoke(&method, &args)?;
            out.print(
                || serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string()),
                || result.clone(),
            );
        }
    }
    Ok(())
}

async fn watch(
    client: &Client,
    app: &AppName,
    out: Printer,
    map: String,
    prefix: bool,
    from: Option<u64>,
) -> anyhow::Result<()> {
    let mut spec = if prefix {
        SubscriptionSpec::prefix(app.clone(), map)
    } else {
        SubscriptionSpec::map(app.clone(), &map_name(&map)?)
    };
    spec.from_version = from;
    let mut subscription = client.subscribe(vec![spec]).await?;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            stopped = &mut stop => {
                stopped.context("cannot listen for Ctrl-C")?;
                return Ok(());
            }
            event = subscription.next() => {
                for update in event?.updates {
                    out.print(|| render::update_line(&update), || render::update_json(&update));
                }
            }
        }
    }
}

async fn run_cluster(client: &Client, out: Printer, command: ClusterCommand) -> anyhow::Result<()> {
    let (done, nodes) = match command {
        ClusterCommand::Status { all: false } => {
            let status = client.cluster_status().await?;
            out.print(
                || render::cluster_human(std::slice::from_ref(&status)),
                || json!(status),
            );
            return Ok(());
        }
        ClusterCommand::Status { all: true } => return status_of_all(client, out).await,
        ClusterCommand::Add { id, addr } => (
            format!("added node {id} ({addr}) as a learner"),
            client.add_learner(id, &addr).await?,
        ),
        ClusterCommand::Promote { id } => (
            format!("promoted node {id} to voter"),
            client.promote(id).await?,
        ),
        ClusterCommand::Remove { id } => {
            (format!("removed node {id}"), client.remove_node(id).await?)
        }
        ClusterCommand::Transfer { id } => (
            format!("asked to transfer leadership to node {id}"),
            client.transfer_leader(id).await?,
        ),
    };
    out.print(
        || format!("{done}\n{}", render::members_human(&nodes)),
        || json!({ "nodes": nodes }),
    );
    Ok(())
}

/// `endpoint: why it did not answer`.
fn failure(endpoint: &str, error: &ClientError) -> String {
    match error {
        // Its `last` already starts with the endpoint.
        ClientError::Unavailable { last, .. } => last.clone(),
        other => format!("{endpoint}: {other}"),
    }
}

/// Asks every endpoint at once; fails only if none answers.
async fn status_of_all(client: &Client, out: Printer) -> anyhow::Result<()> {
    let endpoints = client.endpoints();
    let answers: Vec<Result<_, ClientError>> =
        futures::future::join_all(endpoints.iter().map(|e| client.cluster_status_of(e))).await;
    let statuses: Vec<_> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .cloned()
        .collect();
    if statuses.is_empty() {
        let last = answers
            .iter()
            .zip(&endpoints)
            .filter_map(|(a, endpoint)| a.as_ref().err().map(|e| failure(endpoint, e)))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ClientError::Unavailable {
            tried: endpoints,
            last,
        }
        .into());
    }
    out.print(
        || {
            let mut text = render::cluster_human(&statuses);
            for (endpoint, answer) in endpoints.iter().zip(&answers) {
                if let Err(e) = answer {
                    text.push_str(&format!("\nno answer: {}", failure(endpoint, e)));
                }
            }
            text
        },
        || {
            let items: Vec<Value> = endpoints
                .iter()
                .zip(&answers)
                .map(|(endpoint, answer)| match answer {
                    Ok(status) => json!({"endpoint": endpoint, "status": status}),
                    Err(e) => json!({"endpoint": endpoint, "error": e.to_string()}),
                })
                .collect();
            json!({ "endpoints": items })
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_ops_are_pairs_or_one_method() -> anyhow::Result<()> {
        let put = |pairs: &[&str], method: Option<&str>| PutArgs {
            map: "bob-tv-x".into(),
            pairs: pairs.iter().map(|s| s.to_string()).collect(),
            method: method.map(str::to_string),
            args: vec!["n".into()],
            write: WriteArgs {
                version: None,
                update_id: None,
            },
        };
        let ops = put_ops(&put(&["a", "1", "b", "two"], None))?;
        assert_eq!(
            ops,
            vec![
                (Arc::from("a"), Some(Entry::value(json!(1)))),
                (Arc::from("b"), Some(Entry::value(json!("two")))),
            ]
        );
        assert!(put_ops(&put(&["a", "1", "b"], None)).is_err());
        let ops = put_ops(&put(&["total"], Some("n * 2")))?;
        assert_eq!(
            ops,
            vec![(
                Arc::from("total"),
                Some(Entry::method(vec!["n".into()], "n * 2"))
            )]
        );
        assert!(put_ops(&put(&["a", "b"], Some("1"))).is_err());
        Ok(())
    }

    #[test]
    fn files_hold_objects_or_change_sets() -> anyhow::Result<()> {
        let entries = initial_entries(r#"{"a": 1, "b": {"c": null}}"#, "f")?;
        assert_eq!(entries.len(), 2);
        assert!(initial_entries("[1]", "f").is_err());
        assert!(initial_entries("{", "f").is_err());
        let one =
            r#"{"map": "bob-tv-x", "version": 2, "update_id": "u", "put": [["k", {"value": 1}]]}"#;
        assert_eq!(change_sets(one, "f")?.len(), 1);
        assert_eq!(change_sets(&format!("[{one}, {one}]"), "f")?.len(), 2);
        assert!(change_sets("[]", "f").is_err());
        let bad = change_sets(r#"{"map": "Bob", "version": 0, "update_id": "u"}"#, "f");
        assert!(bad.is_err_and(|e| format!("{e:#}").contains("\"Bob\"")));
        Ok(())
    }

    #[test]
    fn update_ids_default_to_random_spinectl_ids() -> anyhow::Result<()> {
        let none = WriteArgs {
            version: None,
            update_id: None,
        };
        let a = update_id(&none)?;
        assert!(a.as_str().starts_with("spinectl-") && a.as_str().len() == "spinectl-".len() + 16);
        assert_ne!(a, update_id(&none)?);
        let given = WriteArgs {
            version: None,
            update_id: Some("mine".into()),
        };
        assert_eq!(update_id(&given)?.as_str(), "mine");
        let bad = WriteArgs {
            version: None,
            update_id: Some("has space".into()),
        };
        assert!(update_id(&bad).is_err());
        Ok(())
    }
}
