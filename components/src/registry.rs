//! Factories by module name, filled at build time (Rust has no dynamic imports).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::component::{Component, Handle};
use crate::context::Context;
use crate::description::{ComponentPath, Description};
use crate::error::{BoxError, Error};

/// The built-in static container: children restarted all together (one-for-all).
pub const STATIC_CONTAINER: &str = "components#static";
/// The built-in dynamic container: children added at run time, restarted one by one.
pub const DYNAMIC_CONTAINER: &str = "components#dynamic";

/// What a factory gets.
#[derive(Debug, Clone)]
pub struct FactoryArgs {
    /// Where the component goes, `top/h2/h21`.
    pub path: ComponentPath,
    /// The resolved env (the description's, after merges, properties and links).
    pub env: Map<String, Value>,
    /// The whole resolved description of this component.
    pub description: Arc<Description>,
    /// The siblings created before this component, and the top's children.
    pub context: Context,
    /// This component's children, already created, if it has any.
    pub children: Option<Context>,
}

impl FactoryArgs {
    /// The component's name.
    pub fn name(&self) -> &str {
        &self.description.name
    }
}

type Factory =
    Arc<dyn Fn(FactoryArgs) -> BoxFuture<'static, Result<Handle, BoxError>> + Send + Sync>;

/// Module name (`crate#factory`) to async factory.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl Registry {
    /// An empty registry; the built-in containers need no registration.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `factory` under `module`.
    pub fn register<T, F, Fut>(&mut self, module: &str, factory: F) -> Result<&mut Self, Error>
    where
        T: Component,
        F: Fn(FactoryArgs) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
    {
        if module == STATIC_CONTAINER
            || module == DYNAMIC_CONTAINER
            || self.factories.contains_key(module)
        {
            return Err(Error::DuplicateModule {
                module: module.to_owned(),
            });
        }
        let factory: Factory = Arc::new(move |args| {
            let built = factory(args);
            Box::pin(async move { built.await.map(Handle::new) })
        });
        self.factories.insert(module.to_owned(), factory);
        Ok(self)
    }

    /// The registered module names, sorted.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    pub(crate) fn build(
        &self,
        module: &str,
        args: FactoryArgs,
    ) -> Option<BoxFuture<'static, Result<Handle, BoxError>>> {
        Some(self.factories.get(module)?(args))
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("modules", &self.factories.keys().collect::<Vec<_>>())
            .finish()
    }
}
