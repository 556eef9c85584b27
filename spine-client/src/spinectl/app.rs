//! `spinectl app`: publish scripted apps, list their versions, roll back.

use anyhow::Context;
use serde_json::json;
use sharing_map::AppName;
use spine_client::Client;
use spine_client::apps::{AppVersion, AppVersions};

use super::args::{AppCommand, Output};

/// Runs an `app` command; `default_app` is `--app`.
pub async fn run_app(
    client: &Client,
    default_app: &str,
    output: Output,
    command: AppCommand,
) -> anyhow::Result<()> {
    let now = now_ms()?;
    match command {
        AppCommand::Publish { dir } => {
            let package = code_map::Package::from_dir(&dir).map_err(|e| {
                anyhow::anyhow!("the app in {} was not published: {e}", dir.display())
            })?;
            let v = client.publish_app(&package, now).await?;
            print_published(output, &package.manifest.app, &v, "published");
        }
        AppCommand::Versions { app } => {
            let app = AppName::parse(app.as_deref().unwrap_or(default_app))?;
            let versions = client.app_versions(&app).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string(&versions)?),
                Output::Human => print!("{}", render_versions(&versions)),
            }
        }
        AppCommand::Rollback { app, to } => {
            let app = AppName::parse(app.as_deref().unwrap_or(default_app))?;
            let v = client.rollback_app(&app, to, now).await?;
            print_published(output, app.as_str(), &v, "rolled back");
        }
    }
    Ok(())
}

fn now_ms() -> anyhow::Result<u64> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?;
    Ok(since.as_millis() as u64)
}

fn print_published(output: Output, app: &str, v: &AppVersion, what: &str) {
    match output {
        Output::Json => println!("{}", json!({"app": app, "published": v})),
        Output::Human => {
            let from = v
                .rollback_of
                .map(|f| format!(", the content of version {f}"))
                .unwrap_or_default();
            println!(
                "{what} {app}: version {} (state version {}, {}{from})",
                v.version,
                v.state_version,
                short(&v.digest)
            );
        }
    }
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// The versions as a table, newest last.
fn render_versions(v: &AppVersions) -> String {
    let mut out = format!(
        "{} (code map {}, current version {})\n",
        v.app, v.map, v.current
    );
    out.push_str("version  state version  published (UTC)      digest\n");
    for row in &v.versions {
        let mark = if row.version == v.current { "*" } else { " " };
        let from = row
            .rollback_of
            .map(|f| format!("  (rollback to {f})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:>6}{mark}  {:<13}  {}  {}{from}\n",
            row.version,
            row.state_version,
            utc(row.at_ms),
            short(&row.digest)
        ));
    }
    if v.oldest_retained > 0 {
        out.push_str(&format!(
            "versions up to {} are no longer retained by the Spine\n",
            v.oldest_retained
        ));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` of milliseconds since the Unix epoch (UTC).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_733_388_245_123), "2024-12-05 08:44:05");
    }

    #[test]
    fn versions_render_as_a_table_marking_the_current_and_rollbacks() {
        let row = |version, rollback_of| AppVersion {
            version,
            state_version: "1.0.0".into(),
            at_ms: 0,
            digest: "sha256:0123456789abcdef0123".into(),
            rollback_of,
        };
        let text = render_versions(&AppVersions {
            app: "acme-counter".into(),
            map: "acme-counter-code".into(),
            current: 3,
            oldest_retained: 0,
            versions: vec![row(1, None), row(3, Some(1))],
        });
        assert!(text.contains("     3*  1.0.0"), "{text}");
        assert!(text.contains("(rollback to 1)"), "{text}");
        assert!(text.contains("sha256:0123456789ab "), "{text}");
    }
}
