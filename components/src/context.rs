//! The name spaces components find each other in: each container's children form a group,
//! and a factory gets a [`Context`] onto its siblings, its own children and the top's children.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::component::{Component, Handle};
use crate::description::{ComponentPath, Description};
use crate::error::Error;

/// Whether a supervisor restarts a component of a dynamic container when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lifetime {
    /// Restarted when it fails (every component of a description is).
    #[default]
    Permanent,
    /// Removed, never restarted, when it fails (CAs are).
    Temporary,
}

/// How a container reacts when one of its children fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// Static containers: restart all children.
    OneForAll,
    /// Dynamic containers: restart that child, unless it is temporary.
    OneForOne,
}

/// A created component and what it takes to rebuild it.
pub(crate) struct Node {
    pub(crate) path: ComponentPath,
    pub(crate) description: Arc<Description>,
    pub(crate) handle: Handle,
    pub(crate) children: Option<Arc<Group>>,
    pub(crate) lifetime: Lifetime,
    shut: AtomicBool,
}

impl Node {
    pub(crate) fn new(
        path: ComponentPath,
        description: Arc<Description>,
        handle: Handle,
        children: Option<Arc<Group>>,
        lifetime: Lifetime,
    ) -> Arc<Self> {
        Arc::new(Node {
            path,
            description,
            handle,
            children,
            lifetime,
            shut: AtomicBool::new(false),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.description.name
    }

    /// True the first time only: shutdown is final.
    pub(crate) fn begin_shutdown(&self) -> bool {
        !self.shut.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn is_shut(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }
}

/// A container's children, in creation order.
pub(crate) struct Group {
    /// The container's path; children are at `path/name`.
    pub(crate) path: ComponentPath,
    pub(crate) strategy: Strategy,
    nodes: Mutex<Vec<Arc<Node>>>,
    /// Serializes structural changes (restarts, additions, removals, shutdown) so lookups and
    /// checkups, which only take `nodes` briefly, never wait on a slow factory.
    pub(crate) changes: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

impl Group {
    pub(crate) fn new(path: ComponentPath, strategy: Strategy) -> Arc<Self> {
        Arc::new(Group {
            path,
            strategy,
            nodes: Mutex::new(Vec::new()),
            changes: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        })
    }

    fn nodes(&self) -> MutexGuard<'_, Vec<Arc<Node>>> {
        // A panic elsewhere while holding the lock leaves the list itself consistent.
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn snapshot(&self) -> Vec<Arc<Node>> {
        self.nodes().clone()
    }

    pub(crate) fn find(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes().iter().find(|n| n.name() == name).cloned()
    }

    /// Registers a node at `index` (the end if `None`).
    pub(crate) fn register(&self, node: Arc<Node>, index: Option<usize>) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed {
                path: node.path.clone(),
            });
        }
        let mut nodes = self.nodes();
        if nodes.iter().any(|n| n.name() == node.name()) {
            return Err(Error::DuplicateName {
                path: node.path.clone(),
            });
        }
        let index = index.unwrap_or(nodes.len()).min(nodes.len());
        nodes.insert(index, node);
        Ok(())
    }

    /// Removes this very node; returns where it was.
    pub(crate) fn unregister(&self, node: &Arc<Node>) -> Option<usize> {
        let mut nodes = self.nodes();
        let index = nodes.iter().position(|n| Arc::ptr_eq(n, node))?;
        nodes.remove(index);
        Some(index)
    }

    pub(crate) fn pop(&self) -> Option<Arc<Node>> {
        self.nodes().pop()
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A view for finding components by name: one container's children, plus the top's.
#[derive(Clone)]
pub struct Context {
    scope: Arc<Group>,
    top: Arc<Group>,
}

impl Context {
    pub(crate) fn new(scope: Arc<Group>, top: Arc<Group>) -> Self {
        Context { scope, top }
    }

    /// The container whose children this context sees.
    pub fn path(&self) -> &ComponentPath {
        &self.scope.path
    }

    /// The component with this name, if registered here and of type `T`.
    pub fn get<T: Component>(&self, name: &str) -> Option<Arc<T>> {
        self.scope.find(name)?.handle.downcast()
    }

    /// The component with this name, if registered here.
    pub fn handle(&self, name: &str) -> Option<Handle> {
        Some(self.scope.find(name)?.handle.clone())
    }

    /// The registered names, in creation order.
    pub fn names(&self) -> Vec<String> {
        self.scope
            .snapshot()
            .iter()
            .map(|n| n.name().to_owned())
            .collect()
    }

    /// The children of the component with this name, if it has any.
    pub fn child(&self, name: &str) -> Option<Context> {
        let group = self.scope.find(name)?.children.clone()?;
        Some(Context::new(group, self.top.clone()))
    }

    /// The top component's children: always reachable, from any depth.
    pub fn top(&self) -> Context {
        Context::new(self.top.clone(), self.top.clone())
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("path", &self.scope.path)
            .field("names", &self.names())
            .finish()
    }
}
