//! Life cycle and supervision of the component tree: sequential creation (children before the
//! parent registers), reverse-order shutdown, and the restart strategies of static (one-for-all)
//! and dynamic (one-for-one) containers.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use futures::future::BoxFuture;

use crate::component::{Component, Handle};
use crate::context::{Context, Group, Lifetime, Node, Strategy};
use crate::description::{ComponentPath, Description};
use crate::error::Error;
use crate::policy::Policy;
use crate::registry::{DYNAMIC_CONTAINER, FactoryArgs, Registry, STATIC_CONTAINER};

/// What every part of the tree needs to rebuild a component.
pub(crate) struct Shared {
    pub(crate) registry: Arc<Registry>,
    pub(crate) top: Arc<Group>,
    pub(crate) policy: Policy,
    /// The component whose checkup started last: the one to blame for a hang.
    checking: Mutex<ComponentPath>,
}

impl Shared {
    pub(crate) fn new(registry: Arc<Registry>, top: Arc<Group>, policy: Policy) -> Arc<Self> {
        let checking = Mutex::new(top.path.clone());
        Arc::new(Shared {
            registry,
            top,
            policy,
            checking,
        })
    }

    pub(crate) fn checking(&self) -> ComponentPath {
        self.checking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_checking(&self, path: &ComponentPath) {
        *self.checking.lock().unwrap_or_else(PoisonError::into_inner) = path.clone();
    }
}

pub(crate) fn strategy_of(module: &str) -> Strategy {
    if module == DYNAMIC_CONTAINER {
        Strategy::OneForOne
    } else {
        Strategy::OneForAll
    }
}

/// Builds a component and its subtree; the caller registers it. `children` is the group its
/// children go in, when it must exist beforehand (the top's).
pub(crate) fn create(
    shared: Arc<Shared>,
    scope: Arc<Group>,
    description: Arc<Description>,
    lifetime: Lifetime,
    children: Option<Arc<Group>>,
) -> BoxFuture<'static, Result<Arc<Node>, Error>> {
    Box::pin(async move {
        let path = scope.path.child(&description.name);
        let module = description.module.as_str();
        let is_container = module == STATIC_CONTAINER || module == DYNAMIC_CONTAINER;
        let children = match children {
            Some(group) => Some(group),
            None if is_container || !description.components.is_empty() => {
                Some(Group::new(path.clone(), strategy_of(module)))
            }
            None => None,
        };
        if let Some(group) = &children {
            for child in &description.components {
                let built = create(
                    shared.clone(),
                    group.clone(),
                    Arc::new(child.clone()),
                    Lifetime::Permanent,
                    None,
                )
                .await
                .and_then(|node| group.register(node, None));
                if let Err(e) = built {
                    abandon(group).await;
                    return Err(e);
                }
            }
        }
        let handle = match module {
            STATIC_CONTAINER => Ok(Handle::new(StaticContainer)),
            DYNAMIC_CONTAINER => match &children {
                Some(group) => Ok(Handle::new(DynamicContainer {
                    shared: Arc::downgrade(&shared),
                    group: group.clone(),
                })),
                None => Err(Error::Closed { path: path.clone() }),
            },
            _ => {
                let args = FactoryArgs {
                    path: path.clone(),
                    env: description.env.clone(),
                    description: description.clone(),
                    context: Context::new(scope.clone(), shared.top.clone()),
                    children: children
                        .as_ref()
                        .map(|g| Context::new(g.clone(), shared.top.clone())),
                };
                match shared.registry.build(module, args) {
                    None => Err(Error::UnknownModule {
                        path: path.clone(),
                        module: module.to_owned(),
                    }),
                    Some(building) => building.await.map_err(|source| Error::Create {
                        path: path.clone(),
                        module: module.to_owned(),
                        source,
                    }),
                }
            }
        };
        match handle {
            Ok(handle) => Ok(Node::new(path, description, handle, children, lifetime)),
            Err(e) => {
                if let Some(group) = &children {
                    abandon(group).await;
                }
                Err(e)
            }
        }
    })
}

/// Shuts down what a failed creation had built; its own error is the one that matters.
async fn abandon(group: &Arc<Group>) {
    group.close();
    if let Err(e) = drain(group).await {
        tracing::warn!(path = %group.path, error = %e.chain(), "shutdown after a failed creation");
    }
}

/// Shuts a component down (once), then its children in reverse order.
pub(crate) fn shutdown_node(node: Arc<Node>) -> BoxFuture<'static, Result<(), Error>> {
    Box::pin(async move {
        if !node.begin_shutdown() {
            return Ok(());
        }
        let own = node
            .handle
            .component()
            .shutdown()
            .await
            .map_err(|source| Error::Shutdown {
                path: node.path.clone(),
                source,
            });
        let children = match &node.children {
            Some(group) => shutdown_group(group).await,
            None => Ok(()),
        };
        own.and(children)
    })
}

/// Closes a group and shuts its nodes down, last created first.
pub(crate) async fn shutdown_group(group: &Arc<Group>) -> Result<(), Error> {
    let _changes = group.changes.lock().await;
    group.close();
    drain(group).await
}

/// Unregisters and shuts down every node, last first; keeps going after errors, returns the first.
async fn drain(group: &Arc<Group>) -> Result<(), Error> {
    let mut first = Ok(());
    while let Some(node) = group.pop() {
        if let Err(e) = shutdown_node(node).await {
            tracing::warn!(error = %e.chain(), "shutdown failed");
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// One supervision pass over a component and its subtree. An error means the component failed
/// and its container did not (or could not) repair it.
pub(crate) fn check(shared: Arc<Shared>, node: Arc<Node>) -> BoxFuture<'static, Result<(), Error>> {
    Box::pin(async move {
        if node.is_shut() {
            return Ok(());
        }
        shared.set_checking(&node.path);
        node.handle
            .component()
            .checkup()
            .await
            .map_err(|source| Error::Checkup {
                path: node.path.clone(),
                source,
            })?;
        match &node.children {
            Some(group) => supervise(&shared, group).await,
            None => Ok(()),
        }
    })
}

async fn supervise(shared: &Arc<Shared>, group: &Arc<Group>) -> Result<(), Error> {
    for node in group.snapshot() {
        let Err(cause) = check(shared.clone(), node.clone()).await else {
            continue;
        };
        match (group.strategy, node.lifetime) {
            (Strategy::OneForAll, _) => return restart_all(shared, group, cause).await,
            (Strategy::OneForOne, Lifetime::Temporary) => {
                tracing::info!(error = %cause.chain(), "removing a failed temporary component");
                let _changes = group.changes.lock().await;
                if group.unregister(&node).is_some() {
                    if let Err(e) = shutdown_node(node).await {
                        tracing::warn!(error = %e.chain(), "shutdown of a failed component");
                    }
                }
            }
            (Strategy::OneForOne, Lifetime::Permanent) => {
                restart_one(shared, group, node, cause).await?;
            }
        }
    }
    Ok(())
}

/// Runs `attempt` once, then up to `max_retries` more times `retry_delay` apart.
async fn with_retries<F>(
    shared: &Arc<Shared>,
    path: &ComponentPath,
    cause: Error,
    mut attempt: F,
) -> Result<(), Error>
where
    F: FnMut() -> BoxFuture<'static, Result<(), Error>>,
{
    tracing::warn!(%path, error = %cause.chain(), "restarting");
    let attempts = shared.policy.max_retries.saturating_add(1);
    let mut last = cause;
    for n in 0..attempts {
        if n > 0 {
            tokio::time::sleep(shared.policy.retry_delay).await;
        }
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(%path, attempt = n + 1, error = %e.chain(), "restart failed");
                last = e;
            }
        }
    }
    Err(Error::GaveUp {
        path: path.clone(),
        attempts,
        source: Box::new(last),
    })
}

/// One-for-all: shut every child down, then recreate and check them all, in order.
async fn restart_all(shared: &Arc<Shared>, group: &Arc<Group>, cause: Error) -> Result<(), Error> {
    let _changes = group.changes.lock().await;
    let members: Vec<(Arc<Description>, Lifetime)> = group
        .snapshot()
        .iter()
        .map(|n| (n.description.clone(), n.lifetime))
        .collect();
    if let Err(e) = drain(group).await {
        tracing::warn!(error = %e.chain(), "shutdown of failed components");
    }
    with_retries(shared, &group.path, cause, || {
        let (shared, group, members) = (shared.clone(), group.clone(), members.clone());
        Box::pin(async move {
            let rebuilt = rebuild_all(&shared, &group, &members).await;
            if rebuilt.is_err() {
                let _ = drain(&group).await;
            }
            rebuilt
        })
    })
    .await
}

async fn rebuild_all(
    shared: &Arc<Shared>,
    group: &Arc<Group>,
    members: &[(Arc<Description>, Lifetime)],
) -> Result<(), Error> {
    for (description, lifetime) in members {
        let node = create(
            shared.clone(),
            group.clone(),
            description.clone(),
            *lifetime,
            None,
        )
        .await?;
        group.register(node, None)?;
    }
    for node in group.snapshot() {
        check(shared.clone(), node).await?;
    }
    Ok(())
}

/// One-for-one: shut this child down, then recreate and check it in its place.
async fn restart_one(
    shared: &Arc<Shared>,
    group: &Arc<Group>,
    node: Arc<Node>,
    cause: Error,
) -> Result<(), Error> {
    let _changes = group.changes.lock().await;
    // Removed while its checkup ran: nothing to restart.
    let Some(index) = group.unregister(&node) else {
        return Ok(());
    };
    if let Err(e) = shutdown_node(node.clone()).await {
        tracing::warn!(error = %e.chain(), "shutdown of a failed component");
    }
    let (description, lifetime) = (node.description.clone(), node.lifetime);
    with_retries(shared, &node.path, cause, || {
        let (shared, group, description) = (shared.clone(), group.clone(), description.clone());
        Box::pin(async move {
            let new = create(shared.clone(), group.clone(), description, lifetime, None).await?;
            group.register(new.clone(), Some(index))?;
            if let Err(e) = check(shared, new.clone()).await {
                group.unregister(&new);
                let _ = shutdown_node(new).await;
                return Err(e);
            }
            Ok(())
        })
    })
    .await
}

/// The built-in `components#static` container: nothing of its own, children restarted together.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticContainer;

impl Component for StaticContainer {}

/// The built-in `components#dynamic` container: children added and removed at run time, each
/// restarted on its own when it fails, except temporary ones, which are removed.
///
/// Find it by name in a [`Context`] (`ctx.get::<DynamicContainer>("cas")`).
pub struct DynamicContainer {
    shared: Weak<Shared>,
    group: Arc<Group>,
}

impl Component for DynamicContainer {}

impl DynamicContainer {
    /// Creates `description` (already resolved) as the last child and registers it.
    pub async fn add(&self, description: Description, lifetime: Lifetime) -> Result<Handle, Error> {
        let path = self.group.path.child(&description.name);
        let shared = self
            .shared
            .upgrade()
            .ok_or(Error::Closed { path: path.clone() })?;
        let _changes = self.group.changes.lock().await;
        if self.group.is_closed() {
            return Err(Error::Closed { path });
        }
        if self.group.find(&description.name).is_some() {
            return Err(Error::DuplicateName { path });
        }
        let node = create(
            shared,
            self.group.clone(),
            Arc::new(description),
            lifetime,
            None,
        )
        .await?;
        let handle = node.handle.clone();
        if let Err(e) = self.group.register(node.clone(), None) {
            let _ = shutdown_node(node).await;
            return Err(e);
        }
        Ok(handle)
    }

    /// Shuts down and unregisters the child with this name; `false` if there is none.
    pub async fn remove(&self, name: &str) -> Result<bool, Error> {
        let _changes = self.group.changes.lock().await;
        let Some(node) = self.group.find(name) else {
            return Ok(false);
        };
        self.group.unregister(&node);
        shutdown_node(node).await?;
        Ok(true)
    }

    /// The children's names, in creation order.
    pub fn names(&self) -> Vec<String> {
        self.children().names()
    }

    /// A context onto the children.
    pub fn children(&self) -> Context {
        let top = match self.shared.upgrade() {
            Some(shared) => shared.top.clone(),
            None => self.group.clone(),
        };
        Context::new(self.group.clone(), top)
    }
}

impl fmt::Debug for DynamicContainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamicContainer")
            .field("path", &self.group.path)
            .finish_non_exhaustive()
    }
}
