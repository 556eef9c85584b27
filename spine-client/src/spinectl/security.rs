//! `spinectl acl ...` and `spinectl token ...`.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use authz_aggregate::{Constraints, RootKey, RootPublicKey, Token};
use serde_json::{Value, json};
use sharing_map::{AppName, MapName};
use spine_client::Client;
use spine_client::acl::{self, AclPrincipal, Edited};

use super::args::{AclCommand, ConstraintArgs, Output, TokenCommand};

fn map_name(text: &str) -> anyhow::Result<MapName> {
    Ok(MapName::parse(text)?)
}

fn print(output: Output, human: String, json: Value) {
    match output {
        Output::Human => println!("{human}"),
        Output::Json => println!("{json}"),
    }
}

fn edited_json(map: &MapName, e: &Edited) -> Value {
    json!({"map": map.to_string(), "version": e.version, "changed": e.changed})
}

/// Runs an ACL command against maps of `app`.
pub async fn run_acl(
    client: &Client,
    app: &AppName,
    output: Output,
    command: AclCommand,
) -> anyhow::Result<()> {
    match command {
        AclCommand::Grant {
            map,
            principal,
            role,
        } => {
            let (map, who) = (map_name(&map)?, AclPrincipal::parse(&principal)?);
            let e = client.acl_grant(app, &map, &who, &role).await?;
            let human = if e.changed {
                format!(
                    "granted {principal} {role} in {map} (version {})",
                    e.version
                )
            } else {
                format!(
                    "{principal} already has {role} in {map} (version {})",
                    e.version
                )
            };
            print(output, human, edited_json(&map, &e));
        }
        AclCommand::Revoke {
            map,
            principal,
            role,
        } => {
            let (map, who) = (map_name(&map)?, AclPrincipal::parse(&principal)?);
            let e = client.acl_revoke(app, &map, &who, role.as_deref()).await?;
            let what = role.as_deref().unwrap_or("every role");
            let human = if e.changed {
                format!(
                    "revoked {what} from {principal} in {map} (version {})",
                    e.version
                )
            } else {
                format!("{principal} had no {what} in {map} (version {})", e.version)
            };
            print(output, human, edited_json(&map, &e));
        }
        AclCommand::Link { map, target } => {
            let (map, target) = (map_name(&map)?, map_name(&target)?);
            let e = client.acl_link(app, &map, &target).await?;
            let human = format!(
                "{map} {} {target} (version {})",
                if e.changed {
                    "now links to"
                } else {
                    "already links to"
                },
                e.version
            );
            print(output, human, edited_json(&map, &e));
        }
        AclCommand::Unlink { map, target } => {
            let (map, target) = (map_name(&map)?, map_name(&target)?);
            let e = client.acl_unlink(app, &map, &target).await?;
            let human = format!(
                "{map} {} {target} (version {})",
                if e.changed {
                    "no longer links to"
                } else {
                    "did not link to"
                },
                e.version
            );
            print(output, human, edited_json(&map, &e));
        }
        AclCommand::Check {
            map,
            principal,
            role,
        } => {
            let (root, who) = (map_name(&map)?, AclPrincipal::parse(&principal)?);
            let snapshot = client.acl_aggregate(app, &root).await?;
            let granted = acl::check(&snapshot, &who, role.as_deref());
            let what = role
                .as_deref()
                .map_or_else(|| "a role".to_string(), |r| format!("role {r}"));
            let human = format!(
                "{}: {principal} {} {what} in the aggregate of {root} ({} maps)",
                if granted { "granted" } else { "denied" },
                if granted { "has" } else { "does not have" },
                snapshot.reachable().len()
            );
            print(
                output,
                human,
                json!({
                    "granted": granted,
                    "principal": principal,
                    "role": role,
                    "root": root.to_string(),
                    "versions": versions(&snapshot),
                }),
            );
        }
        AclCommand::Explain { map, principal } => {
            let (root, who) = (map_name(&map)?, AclPrincipal::parse(&principal)?);
            let snapshot = client.acl_aggregate(app, &root).await?;
            let found = acl::explain(&snapshot, &who);
            let mut lines = Vec::new();
            let mut rows = Vec::new();
            for (key, e) in &found {
                let path: Vec<String> = e.path.iter().map(ToString::to_string).collect();
                let roles = acl::roles_of(e.value.get());
                lines.push(format!(
                    "{} (as {key}) from {}: {}",
                    roles.join(", "),
                    e.map,
                    path.join(" -> ")
                ));
                rows.push(json!({"key": key, "map": e.map.to_string(), "roles": roles, "value": e.value.get(), "path": path}));
            }
            if lines.is_empty() {
                lines.push(format!(
                    "{principal} has no role in the aggregate of {root} ({} maps{})",
                    snapshot.reachable().len(),
                    missing_note(&snapshot)
                ));
            }
            print(
                output,
                lines.join("\n"),
                json!({"principal": principal, "root": root.to_string(), "grants": rows, "versions": versions(&snapshot)}),
            );
        }
    }
    Ok(())
}

fn versions(s: &authz_aggregate::AggregateSnapshot) -> Value {
    s.version_vector()
        .into_iter()
        .map(|(m, v)| (m.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn missing_note(s: &authz_aggregate::AggregateSnapshot) -> String {
    if s.missing().is_empty() {
        String::new()
    } else {
        let names: Vec<String> = s.missing().iter().map(ToString::to_string).collect();
        format!("; linked but missing: {}", names.join(", "))
    }
}

fn constraints(args: &ConstraintArgs) -> anyhow::Result<Constraints> {
    let mut c = Constraints::any();
    c.app_publisher = args.app_publisher.clone();
    c.app_local = args.app_local.clone();
    if let Some(ca) = &args.ca {
        c = c.ca(&sharing_map::CaName::parse(ca)?);
    }
    if let Some(owner) = &args.ca_owner {
        c.ca_owner = Some(owner.clone());
    }
    if let Some(local) = &args.ca_local {
        c.ca_local = Some(local.clone());
    }
    if let Some(d) = args.expires_in {
        c.expiry = Some(SystemTime::now() + d);
    }
    Ok(c)
}

fn read_token(text: &str) -> anyhow::Result<Token> {
    let text = if text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the token from stdin")?;
        s
    } else {
        text.to_string()
    };
    Ok(Token::from_base64(&text)?)
}

fn read_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .with_context(|| {
            format!(
                "reading the {what} {} (spine dev writes it to spine-data/; `spine init` to a directory of your choice)",
                path.display()
            )
        })
}

fn constraints_json(c: &Constraints) -> Value {
    json!({
        "app_publisher": c.app_publisher,
        "app_local": c.app_local,
        "ca_owner": c.ca_owner,
        "ca_local": c.ca_local,
        "expires_at_unix": c.expiry.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
    })
}

fn constraints_text(c: &Constraints) -> String {
    let any = |v: &Option<String>| v.clone().unwrap_or_else(|| "any".into());
    let expiry = match c.expiry {
        None => "never".to_string(),
        Some(t) => {
            let at = t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            match t.duration_since(SystemTime::now()) {
                Ok(left) => format!("at {at} (unix seconds), in {} s", left.as_secs()),
                Err(_) => format!("at {at} (unix seconds): EXPIRED"),
            }
        }
    };
    format!(
        "app publisher: {}\napp local:     {}\nCA owner:      {}\nCA local:      {}\nexpires:       {expiry}",
        any(&c.app_publisher),
        any(&c.app_local),
        any(&c.ca_owner),
        any(&c.ca_local),
    )
}

/// Runs a token command (offline: no Spine needed).
pub fn run_token(output: Output, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Issue {
            root_key_file,
            constraints: args,
        } => {
            let root = RootKey::from_private_hex(&read_file(&root_key_file, "root private key")?)?;
            let token = authz_aggregate::issue(&root, &constraints(&args)?)?;
            print(
                output,
                token.to_base64(),
                json!({"token": token.to_base64()}),
            );
        }
        TokenCommand::Attenuate {
            token,
            root_pub_file,
            constraints: args,
        } => {
            let root = RootPublicKey::from_hex(&read_file(&root_pub_file, "root public key")?)?;
            let narrower =
                authz_aggregate::attenuate(&root, &read_token(&token)?, &constraints(&args)?)?;
            print(
                output,
                narrower.to_base64(),
                json!({"token": narrower.to_base64()}),
            );
        }
        TokenCommand::Inspect {
            token,
            root_pub_file,
        } => {
            let root = RootPublicKey::from_hex(&read_file(&root_pub_file, "root public key")?)?;
            let c = authz_aggregate::inspect(&root, &read_token(&token)?)?;
            print(
                output,
                format!("signature:     valid\n{}", constraints_text(&c)),
                constraints_json(&c),
            );
        }
    }
    Ok(())
}
