//! Scripted apps (DESIGN.md §9.10): CA apps written in Rhai and published as the app's code map
//! (`acme-shop-code`, written by CA `acme-shop` of app `acme-shop`; see the `code-map` crate for
//! the layout and `spinectl app publish|versions|rollback`).
//!
//! ```text
//!  call of app acme-shop ─▶ Host: compiled in? else ScriptedApps::resolve (component `scripted`):
//!                           the node agent's replica of acme-shop-code (not_found if none)
//!  every message ─▶ Activation pins acme-shop-code (and the manifest's reads) ─▶ turn:
//!                   ScriptedApp::version_for(pins) = that version's state version
//!                   ├─ differs from the checkpoint's? __ca_upgrade__(old, new) first
//!                   └─ Programs::get(version): compiled once per version, shared by every CA
//!                      ScriptEngine::call(fn, args) with `this` (api): state, scratch, code, plugins
//! ```
//!
//! A message runs wholly on the one code version pinned for it, data entries included
//! (Isolation); the next message pins the newest the node has (Fairness): a publish reaches every
//! active CA at its next message, without a restart. Limits are the map methods' sandbox, the
//! operations budget per turn. A script refuses a call with `throw app_error("why")` (or
//! `throw #{app_error: ...}`): an application error; anything else that fails (a runtime error,
//! a `throw` of anything else, a limit) is an exception naming the file and line.

pub mod api;
pub mod app;
pub mod engine;
pub mod program;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use sharing_map::{AppName, MethodLimits};

pub use app::ScriptedApp;
pub use engine::ScriptEngine;

use crate::CaError;
use crate::app::App;
use crate::host::AppResolver;

/// Which apps a host serves from code maps: `*` (any app whose code map exists), `acme-*` (any
/// app of publisher `acme`), or one app's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPatterns(Vec<String>);

impl AppPatterns {
    /// Patterns from their text; a pattern that can match no app name is refused.
    pub fn new(patterns: Vec<String>) -> Result<Self, String> {
        for p in &patterns {
            let ok = p == "*"
                || p.strip_suffix("-*")
                    .is_some_and(|publisher| AppName::parse(&format!("{publisher}-x")).is_ok())
                || AppName::parse(p).is_ok();
            if !ok {
                return Err(format!(
                    "{p:?} is not an app pattern (`*`, `publisher-*` or an app name)"
                ));
            }
        }
        Ok(Self(patterns))
    }

    /// Whether `app` is served.
    pub fn matches(&self, app: &AppName) -> bool {
        self.0.iter().any(|p| {
            p == "*"
                || p == app.as_str()
                || p.strip_suffix('*')
                    .is_some_and(|prefix| app.as_str().starts_with(prefix))
        })
    }
}

/// The scripted apps of a host: found by their code maps when first called, kept while the
/// host runs (each holds the node agent's replica of its code map).
#[derive(Debug)]
pub struct ScriptedApps {
    agent: Option<node_agent::Agent>,
    engine: Arc<ScriptEngine>,
    patterns: AppPatterns,
    apps: Mutex<BTreeMap<AppName, Arc<ScriptedApp>>>,
}

impl ScriptedApps {
    /// Scripted apps read through `agent`, run with `limits`, for the apps `patterns` match.
    pub fn new(
        agent: Option<node_agent::Agent>,
        limits: MethodLimits,
        patterns: AppPatterns,
    ) -> Self {
        Self {
            agent,
            engine: Arc::new(ScriptEngine::new(limits)),
            patterns,
            apps: Mutex::new(BTreeMap::new()),
        }
    }

    /// The app, if resolved before.
    pub fn get(&self, app: &AppName) -> Option<Arc<ScriptedApp>> {
        self.apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(app)
            .cloned()
    }

    async fn open(&self, app: &AppName) -> Result<Arc<ScriptedApp>, CaError> {
        if let Some(found) = self.get(app) {
            return Ok(found);
        }
        if !self.patterns.matches(app) {
            return Err(CaError::not_found(format!(
                "this host serves no app {app}: it is not compiled in, and the scripted apps it serves are {:?}",
                self.patterns.0
            )));
        }
        let agent = self.agent.as_ref().ok_or_else(|| {
            CaError::not_found(format!(
                "app {app} is not compiled in, and this host has no node agent to read scripted apps' code maps with"
            ))
        })?;
        let code_map = code_map::code_map_of(app).map_err(|e| CaError::invalid(e.to_string()))?;
        let replica = agent.replica(app, &code_map).await.map_err(|e| match e {
            node_agent::AgentError::NoVersion { .. } => CaError::not_found(format!(
                "no app {app}: it is not compiled into this host and has no code map ({code_map} does not exist; publish the app with `spinectl app publish DIR`)"
            )),
            other => CaError::prepare(format!("reading the code map {code_map} of app {app}: {other}")),
        })?;
        let scripted = Arc::new(ScriptedApp::new(
            app.clone(),
            code_map,
            replica,
            self.engine.clone(),
        ));
        // Nothing published yet: no CA of it may start (and create its state) until there is.
        scripted.newest().map_err(|e| {
            if e.code == ca_client::ErrorCode::NotFound {
                e
            } else {
                CaError::exception(format!("app {app} cannot start: {}", e.message))
            }
        })?;
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        Ok(apps.entry(app.clone()).or_insert(scripted).clone())
    }
}

impl AppResolver for ScriptedApps {
    fn cached(&self, app: &AppName) -> Option<Arc<dyn App>> {
        self.get(app).map(|a| a as Arc<dyn App>)
    }

    fn resolve(&self, app: &AppName) -> BoxFuture<'_, Result<Arc<dyn App>, CaError>> {
        let app = app.clone();
        Box::pin(async move { self.open(&app).await.map(|a| a as Arc<dyn App>) })
    }
}

/// The `scripted` component: the host serves the scripted apps its env `apps` matches, read
/// through the agent component named by `agent`, with the sandbox limits of its env.
#[derive(Debug)]
pub struct ScriptedPart(pub Arc<ScriptedApps>);
impl components::Component for ScriptedPart {}

/// Builds the `scripted` component (`ca-runtime#scripted`).
pub(crate) fn part(a: &components::FactoryArgs) -> Result<ScriptedPart, components::BoxError> {
    use crate::assembly::{AgentPart, names_of, opt_str, u64_of};
    let agent = match opt_str(&a.env, "agent")? {
        Some(name) => Some(
            a.context
                .get::<AgentPart>(&name)
                .ok_or_else(|| format!("env agent: no agent component {name:?}"))?
                .0
                .clone(),
        ),
        None => None,
    };
    let defaults = MethodLimits::default();
    let limit = |key: &str, default: u64| -> Result<u64, components::BoxError> {
        match a.env.get(key) {
            None => Ok(default),
            Some(_) => u64_of(&a.env, key),
        }
    };
    let limits = MethodLimits {
        max_operations: limit("max_operations", defaults.max_operations)?,
        max_call_levels: limit("max_call_levels", defaults.max_call_levels as u64)? as usize,
        max_expr_depth: limit("max_expr_depth", defaults.max_expr_depth as u64)? as usize,
        max_string_bytes: limit("max_string_bytes", defaults.max_string_bytes as u64)? as usize,
        max_array_len: limit("max_array_len", defaults.max_array_len as u64)? as usize,
        max_map_len: limit("max_map_len", defaults.max_map_len as u64)? as usize,
    };
    let patterns = match a.env.get("apps") {
        Some(serde_json::Value::String(s)) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        _ => names_of(&a.env, "apps")?,
    };
    let patterns = AppPatterns::new(patterns).map_err(|e| format!("env apps: {e}"))?;
    Ok(ScriptedPart(Arc::new(ScriptedApps::new(
        agent, limits, patterns,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_any_app_a_publishers_apps_or_one() {
        let p = AppPatterns::new(vec!["acme-*".into(), "bob-shop".into()]).expect("valid");
        let app = |s: &str| AppName::parse(s).expect("app");
        assert!(p.matches(&app("acme-counter")));
        assert!(p.matches(&app("bob-shop")));
        assert!(!p.matches(&app("bob-other")));
        assert!(!p.matches(&app("acmex-counter")));
        assert!(
            AppPatterns::new(vec!["*".into()])
                .expect("valid")
                .matches(&app("x1y-z"))
        );
        assert!(AppPatterns::new(vec!["Acme".into()]).is_err());
        assert!(
            AppPatterns::new(vec!["a-*".into()]).is_err(),
            "publisher too short"
        );
    }
}
