//! Scripted apps' code maps (DESIGN.md §9.10): publish an app directory as one atomic update of
//! its code map, list the published versions, roll back to one.
//!
//! ```text
//!  publish(package)  compile every script (refused: nothing written) ─▶ create <app>-code if
//!                    absent ─▶ one change set putting the whole content + {at_ms, digest},
//!                    removing the rest, CAS on the version read (retried on a conflict)
//!  versions(app)     the map's retained history: each publish's change set holds its content
//!  rollback(app, v)  version v's content rebuilt from its change set (or the map, if current),
//!                    its digest checked, then published again as a new version
//! ```
//!
//! Writing the code map needs a token that speaks for the app's own CA (`acme-shop` for app
//! `acme-shop`): the Spine refuses any other, so only the app's publisher can publish.

use serde::Serialize;
use sharing_map::{AppName, ChangeSet, Limits, MapName, MethodLimits, UpdateId};

use code_map::{CodeError, Compiled, Package, Published, code_map_of};

use crate::{Client, ClientError};

/// How many times a publish re-reads the code map after a version conflict.
pub const PUBLISH_CONFLICT_RETRIES: usize = 5;

/// Why an app command failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    /// The app's content is broken (nothing was written).
    #[error("the app was not published")]
    Code(#[from] CodeError),
    /// The Spine refused or did not answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The content breaks a map limit (nothing was written).
    #[error("the app was not published")]
    Limit(#[from] sharing_map::LimitError),
    /// A version the command needs is not there.
    #[error("{0}")]
    Version(String),
}

/// One published version of an app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppVersion {
    /// The code map version.
    pub version: u64,
    /// The state version its code declares.
    pub state_version: String,
    /// When it was published (milliseconds since the Unix epoch, the publisher's clock).
    pub at_ms: u64,
    /// Its content's digest.
    pub digest: String,
    /// The version whose content it published again, if a rollback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// The versions of an app the Spine still has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppVersions {
    /// The app.
    pub app: String,
    /// Its code map.
    pub map: String,
    /// The code map's current version (the one CAs move to).
    pub current: u64,
    /// Versions before this one are no longer retained (their content cannot be rolled back to).
    pub oldest_retained: u64,
    /// The retained versions, oldest first.
    pub versions: Vec<AppVersion>,
}

/// Compiles every script of `package` as the CA runtime will (the map methods' sandbox).
pub fn check(package: &Package) -> Result<(), CodeError> {
    package.manifest.check("app.json")?;
    Compiled::new(
        &code_map::sandbox(&MethodLimits::default()),
        &package.scripts,
    )
    .map(|_| ())
}

fn version_of(package: &Package, published: &Published, version: u64) -> AppVersion {
    AppVersion {
        version,
        state_version: package.manifest.state_version.to_string(),
        at_ms: published.at_ms,
        digest: published.digest.clone(),
        rollback_of: published.rollback_of,
    }
}

impl Client {
    /// Publishes `package` as the next version of its app's code map, at `now_ms` (the caller's
    /// clock), after checking every script compiles: a broken one writes nothing.
    pub async fn publish_app(
        &self,
        package: &Package,
        now_ms: u64,
    ) -> Result<AppVersion, AppError> {
        self.publish(package, now_ms, None).await
    }

    async fn publish(
        &self,
        package: &Package,
        now_ms: u64,
        rollback_of: Option<u64>,
    ) -> Result<AppVersion, AppError> {
        check(package)?;
        let app = package.manifest.app_name()?;
        let map = package.manifest.code_map()?;
        let published = Published {
            at_ms: now_ms,
            digest: package.digest()?,
            rollback_of,
        };
        let limits = Limits::default();
        for (key, entry) in package.entries()? {
            limits.check_entry(&key, &entry)?;
        }
        self.create_map(&app, &map, Vec::new()).await?;
        let update_id =
            UpdateId::parse(&format!("publish-{now_ms}-{:08x}", rand::random::<u32>()))?;
        let mut conflicts = 0;
        loop {
            let current = self.get_map(&app, &map, false).await?;
            let cs = ChangeSet::from_ops(
                map.clone(),
                current.version(),
                update_id.clone(),
                package.ops(&published, &current)?,
            );
            limits.check_change_set(&cs)?;
            match self.update(&app, vec![cs]).await {
                Ok(versions) => {
                    let version = versions.first().copied().unwrap_or(current.version() + 1);
                    return Ok(version_of(package, &published, version));
                }
                Err(e) if e.is_conflict() && conflicts < PUBLISH_CONFLICT_RETRIES => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The versions of `app` its code map still has: each publish's change set in the retained
    /// history, and the current version.
    pub async fn app_versions(&self, app: &AppName) -> Result<AppVersions, AppError> {
        let map = code_map_of(app)?;
        let history = self
            .history(app, &map, 0)
            .await
            .map_err(|e| not_published(app, &map, e))?;
        let mut versions = Vec::new();
        for cs in &history.change_sets {
            // A change set that is not a whole publish (a hand-made update) is no version.
            if let Ok((package, published)) =
                Package::from_entries(cs.puts().iter().map(|(k, e)| (&**k, e)))
                && package.digest().ok().as_deref() == Some(published.digest.as_str())
            {
                versions.push(version_of(&package, &published, cs.next_version()));
            }
        }
        if versions.last().map(|v| v.version) != Some(history.current_version)
            && history.current_version > 0
        {
            let current = self.get_map(app, &map, false).await?;
            if let Ok((package, published)) = Package::from_map(&current) {
                versions.push(version_of(&package, &published, current.version()));
            }
        }
        Ok(AppVersions {
            app: app.to_string(),
            map: map.to_string(),
            current: history.current_version,
            oldest_retained: history.oldest_retained,
            versions,
        })
    }

    /// Publishes again the content of `app`'s version `to` as a new version (a rollback).
    pub async fn rollback_app(
        &self,
        app: &AppName,
        to: u64,
        now_ms: u64,
    ) -> Result<AppVersion, AppError> {
        let map = code_map_of(app)?;
        let current = self
            .get_map(app, &map, false)
            .await
            .map_err(|e| not_published(app, &map, e))?;
        let package = if to == current.version() {
            Package::from_map(&current)?.0
        } else if to > current.version() || to == 0 {
            return Err(AppError::Version(format!(
                "app {app} has no version {to}: its code map {map} is at version {}",
                current.version()
            )));
        } else {
            let history = self.history(app, &map, to - 1).await?;
            let cs = history
                .change_sets
                .iter()
                .find(|cs| cs.next_version() == to)
                .ok_or_else(|| {
                    AppError::Version(format!(
                        "version {to} of app {app} is no longer retained by the Spine (its code map {map} keeps the change sets after version {}; the Spine retains the last `--history` updates per map, and after a restart only those since its checkpoint): publish that version's directory again with `spinectl app publish DIR`",
                        history.oldest_retained
                    ))
                })?;
            content_of(cs, app, to)?
        };
        self.publish(&package, now_ms, Some(to)).await
    }
}

/// The content version `to` published, from the change set that made it.
fn content_of(cs: &ChangeSet, app: &AppName, to: u64) -> Result<Package, AppError> {
    let not_a_publish = |why: String| {
        AppError::Version(format!(
            "version {to} of app {app} was not made by a publish ({why}): it cannot be rolled back to"
        ))
    };
    let (package, published) = Package::from_entries(cs.puts().iter().map(|(k, e)| (&**k, e)))
        .map_err(|e| not_a_publish(e.to_string()))?;
    if package.digest()? != published.digest {
        return Err(not_a_publish(
            "its content does not match its digest".into(),
        ));
    }
    Ok(package)
}

fn not_published(app: &AppName, map: &MapName, e: ClientError) -> AppError {
    if e.code() == tonic::Code::NotFound {
        AppError::Version(format!(
            "app {app} was never published: its code map {map} does not exist"
        ))
    } else {
        e.into()
    }
}
