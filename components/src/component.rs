//! What a factory builds: a [`Component`], held by the tree as a [`Handle`] so others can find it
//! by name and use its concrete type.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::error::BoxError;

/// A long-lived part of a host.
///
/// Both methods have do-nothing defaults. The tree calls `shutdown` at most once per instance, but
/// a component shared elsewhere should still make it idempotent: it is final.
pub trait Component: Send + Sync + 'static {
    /// Health: an error makes the supervisor restart this component (or its siblings too, in a
    /// static container). A checkup still pending at the supervisor's next tick is a hang.
    fn checkup(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }

    /// Releases what the component holds. Called before its children are shut down, since it was
    /// created after them and may use them.
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A created component, usable both as `dyn Component` and as its concrete type.
#[derive(Clone)]
pub struct Handle {
    component: Arc<dyn Component>,
    any: Arc<dyn Any + Send + Sync>,
}

impl Handle {
    /// Wraps a freshly built component.
    pub fn new<T: Component>(component: T) -> Self {
        Self::from_arc(Arc::new(component))
    }

    /// Wraps a component the factory also keeps a reference to.
    pub fn from_arc<T: Component>(component: Arc<T>) -> Self {
        Handle {
            component: component.clone(),
            any: component,
        }
    }

    /// The component, for `checkup` and `shutdown`.
    pub fn component(&self) -> &Arc<dyn Component> {
        &self.component
    }

    /// The component as its concrete type, if it is a `T`.
    pub fn downcast<T: Component>(&self) -> Option<Arc<T>> {
        self.any.clone().downcast::<T>().ok()
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}
