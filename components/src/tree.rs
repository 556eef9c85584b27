//! A built host: the top component and everything below it.

use std::fmt;
use std::sync::Arc;

use crate::component::Component;
use crate::container::{Shared, check, create, shutdown_group, strategy_of};
use crate::context::{Context, Group, Lifetime};
use crate::description::{ComponentPath, Description};
use crate::error::Error;
use crate::policy::Policy;
use crate::registry::Registry;

/// The components built from a resolved description. Cloning shares the same tree.
#[derive(Clone)]
pub struct Tree {
    shared: Arc<Shared>,
    /// Holds the top only, so shutting it down is shutting the top down.
    root: Arc<Group>,
    path: ComponentPath,
}

impl Tree {
    /// Creates every component, in description order, children before their parent; the top
    /// last. On failure, what was already created is shut down again.
    pub async fn create(description: &Description, registry: Arc<Registry>) -> Result<Self, Error> {
        let path = ComponentPath::top(&description.name);
        let policy = Policy::from_env(&description.env, &path)?;
        let top = Group::new(path.clone(), strategy_of(&description.module));
        let shared = Shared::new(registry, top.clone(), policy);
        let root = Group::new(ComponentPath::default(), strategy_of(""));
        let node = create(
            shared.clone(),
            root.clone(),
            Arc::new(description.clone()),
            Lifetime::Permanent,
            Some(top),
        )
        .await?;
        root.register(node, None)?;
        Ok(Tree { shared, root, path })
    }

    /// The top component's path.
    pub fn path(&self) -> &ComponentPath {
        &self.path
    }

    /// The supervision settings, from the top's env.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// The top component, if it is a `T` (and not shut down).
    pub fn top<T: Component>(&self) -> Option<Arc<T>> {
        self.root.snapshot().first()?.handle.downcast()
    }

    /// A context onto the top's children.
    pub fn context(&self) -> Context {
        Context::new(self.shared.top.clone(), self.shared.top.clone())
    }

    /// One supervision pass: every component's checkup, top down, with containers restarting
    /// failed children. An error is unrecoverable: the top failed, or a restart gave up.
    pub async fn checkup(&self) -> Result<(), Error> {
        match self.root.snapshot().first() {
            Some(top) => check(self.shared.clone(), top.clone()).await,
            None => Ok(()),
        }
    }

    /// The component whose checkup started last (the one to blame if it hangs).
    pub fn checking(&self) -> ComponentPath {
        self.shared.checking()
    }

    /// Shuts everything down in reverse creation order, unregistering each component. Only the
    /// first call does anything; it returns the first shutdown error, after trying them all.
    pub async fn shutdown(&self) -> Result<(), Error> {
        shutdown_group(&self.root).await
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree")
            .field("path", &self.path)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}
