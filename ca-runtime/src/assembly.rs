//! A host assembled from a JSON component description (DESIGN.md §10): `ca-runtime/host.json`
//! names the parts (Spine client, node agent, intent plugins, apps, placement, the host engine, the client
//! endpoint) and their settings; [`registry`] has a factory for each module it names.
//!
//! Parts find the parts they use by name in the env (`"spine": "spine"`), created before them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use authz_aggregate::{RootPublicKey, Verifier};
use components::{BoxError, Component, FactoryArgs, Registry};
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use sharing_map::AppName;
use tokio::sync::oneshot;

use crate::apps::counter::Counter;
use crate::committer::CommitterConfig;
use crate::placement::{Placement, PlacementConfig};
use crate::plugins::{IntentPlugin, LogPlugin, Plugins};
use crate::service::CaService;
use crate::turn::TurnPlugin;
use crate::{App, Host, HostConfig};

/// The default description, `ca-runtime/host.json`.
pub const DEFAULT_HOST_JSON: &str = include_str!("../host.json");

/// Builds a host from `description` (resolved: see `components::resolve`) with the factories of
/// `registry`, prints where it serves, and supervises it until `stop` resolves (or it cannot be
/// kept running); then shuts it down in reverse order. A host binary with apps of its own adds
/// their factories to [`registry`]'s and calls this (see `ca-runtime/examples/greeter.rs`).
pub async fn run(
    description: &components::Description,
    registry: Registry,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), BoxError> {
    if let Some(path) = description
        .child("log")
        .and_then(|l| l.env.get("path"))
        .and_then(Value::as_str)
        && let Some(dir) = std::path::Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let tree = components::Tree::create(description, Arc::new(registry))
        .await
        .map_err(|e| format!("building the host from its description: {e}"))?;
    let endpoint = tree
        .context()
        .get::<EndpointPart>("endpoint")
        .map(|e| e.addr.to_string())
        .unwrap_or_else(|| "?".into());
    let http = tree
        .context()
        .get::<HttpPart>("http")
        .map(|h| format!(", HTTP on http://{}", h.addr))
        .unwrap_or_default();
    let scripted = description
        .child("scripted")
        .and_then(|s| s.env.get("apps"))
        .map(|a| format!(", scripted apps: {a}"))
        .unwrap_or_default();
    println!(
        "ca-host: {} serving on {endpoint}{http} (apps: {}{scripted})",
        description.name,
        description
            .child("host")
            .and_then(|h| h.env.get("apps"))
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let supervisor = components::Supervisor::new(tree.clone());
    let outcome = supervisor.run(stop).await;
    let _ = tree.shutdown().await;
    outcome.map_err(|e| format!("the host could not be kept running: {e}").into())
}

/// The factories of every module `host.json` may name.
pub fn registry() -> Result<Registry, components::Error> {
    let mut r = Registry::new();
    r.register(
        "ca-runtime#spine",
        |a: FactoryArgs| async move { spine(&a) },
    )?;
    r.register("ca-runtime#agent", |a: FactoryArgs| async move {
        agent(&a).await
    })?;
    r.register("ca-runtime#log", |a: FactoryArgs| async move {
        Ok::<_, BoxError>(PluginPart::intent(LogPlugin::new(PathBuf::from(str_of(
            &a.env, "path",
        )?))))
    })?;
    crate::plugins::session::register(&mut r)?;
    crate::web::register(&mut r)?;
    r.register("ca-runtime#timers", |a: FactoryArgs| async move {
        crate::plugins::timers::part(&a.env)
    })?;
    r.register("ca-runtime#http-client", |a: FactoryArgs| async move {
        crate::plugins::http::part(&a.env)
    })?;
    r.register("ca-runtime#events", |a: FactoryArgs| async move {
        crate::plugins::events::part(&a.env)
    })?;
    r.register("ca-runtime#events-ingress", |a: FactoryArgs| async move {
        let host = part::<HostPart>(&a, "host")?.0.clone();
        crate::plugins::events::ingress::part(host, &a.env)
    })?;
    r.register("ca-runtime#books", |a: FactoryArgs| async move {
        Ok::<_, BoxError>(AppPart {
            name: AppName::parse(a.name())?,
            app: Arc::new(crate::apps::books::Books),
        })
    })?;
    r.register("ca-runtime#alarm", |a: FactoryArgs| async move {
        Ok::<_, BoxError>(AppPart {
            name: AppName::parse(a.name())?,
            app: Arc::new(crate::apps::alarm::Alarm),
        })
    })?;
    r.register("ca-runtime#counter", |a: FactoryArgs| async move {
        let version = semver::Version::parse(&str_of(&a.env, "state_version")?)
            .map_err(|e| format!("state_version: {e}"))?;
        let name = AppName::parse(a.name())?;
        Ok::<_, BoxError>(AppPart {
            name,
            app: Arc::new(Counter::new(version)),
        })
    })?;
    r.register("ca-runtime#scripted", |a: FactoryArgs| async move {
        crate::scripted::part(&a)
    })?;
    r.register("ca-runtime#placement", |a: FactoryArgs| async move {
        placement(&a)
    })?;
    r.register("ca-runtime#host", |a: FactoryArgs| async move { host(&a) })?;
    r.register("ca-runtime#endpoint", |a: FactoryArgs| async move {
        endpoint(a).await
    })?;
    r.register(
        "ca-runtime#http",
        |a: FactoryArgs| async move { http(a).await },
    )?;
    Ok(r)
}

/// The Spine client, and how it reaches the Spine (for parts that connect on their own).
#[derive(Debug)]
pub struct SpinePart {
    /// The client.
    pub client: spine_client::Client,
    /// The Spine endpoints it was given.
    pub endpoints: Vec<String>,
    /// The token it presents.
    pub token: Option<String>,
}
impl Component for SpinePart {}

/// The node agent the host's CAs read other maps and aggregates through.
#[derive(Debug)]
pub struct AgentPart(pub node_agent::Agent);
impl Component for AgentPart {
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        self.0.shutdown();
        Box::pin(async { Ok(()) })
    }
}

/// A plugin: the half that carries out intents after commit, the half that takes part in every
/// turn, or both.
#[derive(Debug, Default)]
pub struct PluginPart {
    /// Carries out its intents.
    pub intent: Option<Arc<dyn IntentPlugin>>,
    /// Takes part in every turn.
    pub turn: Option<Arc<dyn TurnPlugin>>,
}
impl Component for PluginPart {}

impl PluginPart {
    /// A plugin that only carries out intents.
    pub fn intent(plugin: Arc<dyn IntentPlugin>) -> Self {
        Self {
            intent: Some(plugin),
            turn: None,
        }
    }
}

/// Routes a part serves on the host's HTTP port (component `http`, env `routes`).
#[derive(Debug)]
pub struct RoutesPart(pub axum::Router);
impl Component for RoutesPart {}

/// The host's HTTP server (axum): the routes of the parts its env names, and `GET /health`.
#[derive(Debug)]
pub struct HttpPart {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Stop,
}

impl Component for HttpPart {
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        self.stop.shutdown()
    }
}

/// An app.
pub struct AppPart {
    /// The app name (the component's name).
    pub name: AppName,
    /// Its code.
    pub app: Arc<dyn App>,
}
impl Component for AppPart {}
impl std::fmt::Debug for AppPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppPart({})", self.name)
    }
}

/// Placement, or none (every CA served here).
#[derive(Debug)]
pub struct PlacementPart(pub Option<Arc<Placement>>);
impl Component for PlacementPart {}

/// The host engine.
#[derive(Debug)]
pub struct HostPart(pub Host);
impl Component for HostPart {}

/// A server's stop signal: sent once, at the part's shutdown.
#[derive(Debug)]
pub struct Stop(std::sync::Mutex<Option<oneshot::Sender<()>>>);

impl Stop {
    /// A stop signal and what the server waits on.
    pub fn new() -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Self(std::sync::Mutex::new(Some(tx))), rx)
    }

    /// Stops the server (once; later calls do nothing).
    pub fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        let stop = self.0.lock().ok().and_then(|mut s| s.take());
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        Box::pin(async { Ok(()) })
    }
}

/// The client endpoint, serving until shut down.
#[derive(Debug)]
pub struct EndpointPart {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The service it serves (the WebSocket endpoint serves the same, in-process).
    pub service: CaService,
    stop: Stop,
}

impl Component for EndpointPart {
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        self.stop.shutdown()
    }
}

pub(crate) fn str_of(env: &Map<String, Value>, key: &str) -> Result<String, BoxError> {
    match env.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => Err(format!("env {key} must be a string, not {other}").into()),
        None => Err(format!("env {key} is missing").into()),
    }
}

pub(crate) fn opt_str(env: &Map<String, Value>, key: &str) -> Result<Option<String>, BoxError> {
    match env.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => Ok(Some(str_of(env, key)?).filter(|s| !s.is_empty())),
    }
}

pub(crate) fn u64_of(env: &Map<String, Value>, key: &str) -> Result<u64, BoxError> {
    match env.get(key) {
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("env {key} must be a whole number, not {n}").into()),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| format!("env {key} must be a whole number, not {s:?}").into()),
        Some(other) => Err(format!("env {key} must be a whole number, not {other}").into()),
        None => Err(format!("env {key} is missing").into()),
    }
}

pub(crate) fn bool_of(env: &Map<String, Value>, key: &str) -> Result<bool, BoxError> {
    match env.get(key) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => Err(format!("env {key} must be true or false, not {other}").into()),
        None => Err(format!("env {key} is missing").into()),
    }
}

pub(crate) fn names_of(env: &Map<String, Value>, key: &str) -> Result<Vec<String>, BoxError> {
    match env.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("env {key} must list names, not {v}").into())
            })
            .collect(),
        Some(other) => Err(format!("env {key} must be a list of names, not {other}").into()),
        None => Ok(Vec::new()),
    }
}

fn part<T: Component>(a: &FactoryArgs, key: &str) -> Result<Arc<T>, BoxError> {
    let name = str_of(&a.env, key)?;
    a.context.get::<T>(&name).ok_or_else(|| {
        format!(
            "env {key}: no component {name:?} of the right kind was created before {} (created: {})",
            a.name(),
            a.context.names().join(", ")
        )
        .into()
    })
}

fn spine(a: &FactoryArgs) -> Result<SpinePart, BoxError> {
    let endpoints: Vec<String> = match a.env.get("endpoints") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => str_of(&a.env, "endpoints")?
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    if endpoints.is_empty() {
        return Err("env endpoints names no Spine endpoint".into());
    }
    // Neither: `spine dev`'s admin token if the directory has one, else no token.
    let token_file = opt_str(&a.env, "token_file")?.map(PathBuf::from);
    let token = spine_client::resolve_token(opt_str(&a.env, "token")?, token_file.as_deref())?;
    let mut builder = spine_client::Client::builder(endpoints.clone());
    if let Some(t) = &token {
        builder = builder.token(t.clone());
    }
    Ok(SpinePart {
        client: builder.build()?,
        endpoints,
        token,
    })
}

/// The node agent, connected to the Spine of part `spine` with its token (which must read the
/// maps the CAs read; a host's admin token does).
async fn agent(a: &FactoryArgs) -> Result<AgentPart, BoxError> {
    let spine = part::<SpinePart>(a, "spine")?;
    let config = node_agent::AgentConfig {
        first_version_timeout: Duration::from_millis(u64_of(&a.env, "read_timeout_ms")?.max(1)),
        versions_kept: u64_of(&a.env, "versions_kept")?.max(1) as usize,
        idle_timeout: Duration::from_millis(u64_of(&a.env, "idle_ms")?.max(1)),
        token: spine.token.clone(),
        ..node_agent::AgentConfig::default()
    };
    let agent = node_agent::Agent::connect(spine.endpoints.clone(), config)
        .await
        .map_err(|e| format!("connecting the node agent to the Spine: {e}"))?;
    Ok(AgentPart(agent))
}

fn placement(a: &FactoryArgs) -> Result<PlacementPart, BoxError> {
    if !bool_of(&a.env, "enabled")? {
        tracing::info!("placement is off: this host serves every CA called here");
        return Ok(PlacementPart(None));
    }
    let spine = part::<SpinePart>(a, "spine")?;
    let addr = match opt_str(&a.env, "advertise")? {
        Some(addr) => addr,
        None => str_of(&a.env, "listen")?,
    };
    let partitions =
        u32::try_from(u64_of(&a.env, "partitions")?).map_err(|_| "env partitions is too large")?;
    if partitions == 0 {
        return Err("env partitions must be at least 1".into());
    }
    let http = match opt_str(&a.env, "http_advertise")? {
        Some(h) => Some(h),
        None => opt_str(&a.env, "http_listen")?,
    };
    let config = PlacementConfig {
        http,
        host_id: opt_str(&a.env, "host_id")?.unwrap_or_else(|| addr.clone()),
        addr,
        partitions,
        lease: Duration::from_millis(u64_of(&a.env, "lease_ms")?.max(100)),
    };
    Ok(PlacementPart(Some(Placement::new(
        spine.client.clone(),
        config,
    )?)))
}

fn host(a: &FactoryArgs) -> Result<HostPart, BoxError> {
    let spine = part::<SpinePart>(a, "spine")?;
    let placement = part::<PlacementPart>(a, "placement")?;
    // Optional: a host without an agent serves apps that read no other maps.
    let agent = match opt_str(&a.env, "agent")? {
        Some(_) => Some(part::<AgentPart>(a, "agent")?.0.clone()),
        None => None,
    };
    let mut apps = Vec::new();
    for name in names_of(&a.env, "apps")? {
        let app = a
            .context
            .get::<AppPart>(&name)
            .ok_or_else(|| format!("env apps: no app component {name:?}"))?;
        apps.push((app.name.clone(), app.app.clone()));
    }
    let mut plugins = Plugins::default();
    let mut turn_plugins = Vec::new();
    for name in names_of(&a.env, "plugins")? {
        let plugin = a
            .context
            .get::<PluginPart>(&name)
            .ok_or_else(|| format!("env plugins: no plugin component {name:?}"))?;
        if let Some(p) = &plugin.intent {
            plugins = plugins.with(p.clone());
        }
        if let Some(p) = &plugin.turn {
            turn_plugins.push(p.clone());
        }
    }
    let mut config = HostConfig {
        idle: Duration::from_millis(u64_of(&a.env, "idle_ms")?),
        max_calls: u64_of(&a.env, "max_calls")? as usize,
        max_args_bytes: u64_of(&a.env, "max_args_bytes")? as usize,
        mailbox: u64_of(&a.env, "mailbox")? as usize,
        committer: CommitterConfig {
            max_batch: u64_of(&a.env, "max_batch")?.max(1) as usize,
            max_in_flight: u64_of(&a.env, "max_in_flight")?.max(1) as usize,
        },
        ..HostConfig::default()
    };
    config.limits.max_state_bytes = u64_of(&a.env, "max_state_bytes")? as usize;
    // Who besides a CA's owner may call it: per app, a list of rules (crate::access).
    match a.env.get("rules") {
        None | Some(Value::Null) => {}
        Some(Value::Object(by_app)) => {
            for (app, rules) in by_app {
                let name = AppName::parse(app).map_err(|e| format!("env rules: {e}"))?;
                let policy = crate::access::AccessPolicy::from_json(rules)
                    .map_err(|e| format!("env rules.{app}: {e}"))?;
                config.access.insert(name, policy);
            }
        }
        Some(other) => {
            return Err(format!("env rules must map apps to lists of rules, not {other}").into());
        }
    }
    if a.env.contains_key("wake_scan_ms") {
        config.wake_scan = Duration::from_millis(u64_of(&a.env, "wake_scan_ms")?.max(10));
    }
    let host = Host::new(
        spine.client.clone(),
        agent,
        apps,
        plugins,
        turn_plugins,
        placement.0.clone(),
        config,
    );
    // Optional: apps published as code maps, found when first called.
    if opt_str(&a.env, "scripted")?.is_some() {
        let scripted = part::<crate::scripted::ScriptedPart>(a, "scripted")?;
        host.resolve_apps_with(scripted.0.clone())?;
    }
    Ok(HostPart(host))
}

async fn endpoint(a: FactoryArgs) -> Result<EndpointPart, BoxError> {
    let host = part::<HostPart>(&a, "host")?.0.clone();
    let listen: SocketAddr = str_of(&a.env, "listen")?
        .parse()
        .map_err(|e| format!("env listen: {e}"))?;
    let verifier = if bool_of(&a.env, "no_auth")? {
        tracing::warn!("client authentication is off (no_auth): every call is allowed");
        None
    } else {
        let path = opt_str(&a.env, "root_key_file")?
            .ok_or("env root_key_file: give the deployment's root.pub, or set no_auth")?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!("reading the root public key {path} (see `spine init`, or set no_auth): {e}")
        })?;
        let root = RootPublicKey::from_hex(text.trim())
            .map_err(|e| format!("{path}: not a root public key: {e}"))?;
        Some(Arc::new(Verifier::new(root)))
    };
    if let Some(m) = opt_str(&a.env, "metrics_listen")? {
        let addr: SocketAddr = m.parse().map_err(|e| format!("env metrics_listen: {e}"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("metrics address {addr}: {e}"))?;
        let metrics = host.metrics();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listening on {listen} (is another ca-host running?): {e}"))?;
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<spine_proto::ca_v1::ca_server::CaServer<CaService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(spine_proto::CA_FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let (stop, stopped) = Stop::new();
    let listeners = match opt_str(&a.env, "listeners")? {
        Some(_) => Some(
            part::<crate::plugins::session::ListenersPart>(&a, "listeners")?
                .0
                .clone(),
        ),
        None => None,
    };
    let service = CaService::with_listeners(host, verifier, listeners);
    let served = service.clone().into_server();
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(served)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "client endpoint failed");
        }
    });
    Ok(EndpointPart {
        addr,
        service,
        stop,
    })
}

async fn http(a: FactoryArgs) -> Result<HttpPart, BoxError> {
    let listen: SocketAddr = str_of(&a.env, "listen")?
        .parse()
        .map_err(|e| format!("env listen: {e}"))?;
    let mut router = axum::Router::new().route("/health", axum::routing::get(|| async { "ok\n" }));
    for name in names_of(&a.env, "routes")? {
        let routes = a.context.get::<RoutesPart>(&name).ok_or_else(|| {
            format!(
                "env routes: no part {name:?} serving routes was created before {}",
                a.name()
            )
        })?;
        router = router.merge(routes.0.clone());
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("HTTP listening on {listen} (is another ca-host running?): {e}"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = Stop::new();
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok(HttpPart { addr, stop })
}

#[cfg(test)]
mod tests {
    use super::*;
    use components::Description;

    #[test]
    fn the_default_description_names_only_registered_modules() -> Result<(), BoxError> {
        let d = Description::from_json(DEFAULT_HOST_JSON, "host.json")?;
        let registry = registry()?;
        let known: Vec<&str> = registry.modules().collect();
        for c in &d.components {
            assert!(
                known.contains(&c.module.as_str()),
                "{} is not registered",
                c.module
            );
        }
        let names: Vec<&str> = d.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "spine",
                "agent",
                "log",
                "session-listeners",
                "session",
                "timers",
                "http-client",
                "events",
                "demo-counter",
                "scripted",
                "demo-books",
                "demo-timers",
                "placement",
                "host",
                "endpoint",
                "web",
                "events-ingress",
                "http"
            ],
            "parts are created in order: each after the parts it uses"
        );
        Ok(())
    }
}
