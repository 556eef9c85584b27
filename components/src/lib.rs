//! Components: hosts assembled from JSON descriptions (DESIGN.md §10), as Caf.js's
//! caf_components does, in Rust's idiom.
//!
//! Every long-lived part of a host is a [`Component`] built by an async factory registered under
//! a module name (`crate#factory`) in a [`Registry`]. What to build comes from a JSON
//! [`Description`]:
//!
//! ```text
//!  base.json ──merge── base++.json ──merge── spec ──resolve── process.env.X||d ── $._.env.K
//!  (Description)       (Delta, template)     (Delta)          (Environment)       (top env)
//!        │
//!        └─> Loader::load ─> Description ─> Tree::create(registry) ─> Supervisor::run
//!                                            children first,           checkup every interval,
//!                                            top last                  restarts, hang, exit
//! ```
//!
//! - [`description`]: the JSON shapes; errors name file, component path (`top/h2/h21`) and key.
//! - [`merge`](mod@merge) and [`resolve`](mod@resolve): the pure rules of templates,
//!   environment properties and links.
//! - [`load`]: the files (`NAME++.json` beside the base or in a list of directories).
//! - [`Tree`]: sequential creation, reverse-order idempotent shutdown, lookups by [`Context`].
//! - [`StaticContainer`] (one-for-all) and [`DynamicContainer`] (one-for-one, temporary children
//!   never restarted), built in as `components#static` and `components#dynamic`. Any other
//!   component with children supervises them one-for-all too.
//! - [`Policy`]: `interval`, `max_retries`, `retry_delay`, `max_hang_retries`, `die_delay`, read
//!   from the top's env and applied to the whole tree.
//! - [`Supervisor`]: the tick loop; [`Fatal`] is its "end the process" outcome.
//!
//! # Example
//!
//! A two-level description, a template delta that adds a component, and a link to the top's env:
//!
//! ```
//! use std::sync::Arc;
//! use components::{BoxError, Component, FactoryArgs, Loader, Registry, Tree};
//!
//! struct Greeter { message: String }
//! impl Component for Greeter {}
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("host.json"), r#"{
//!     "module": "components#static", "name": "top", "env": {"greeting": "hello"},
//!     "components": [
//!         {"module": "demo#greeter", "name": "english", "env": {"message": "$._.env.greeting"}}
//!     ]
//! }"#)?;
//! std::fs::write(dir.path().join("host++.json"), r#"{
//!     "components": [
//!         {"name": "english"},
//!         {"name": "french", "module": "demo#greeter", "env": {"message": "bonjour"}}
//!     ]
//! }"#)?;
//!
//! let description = Loader::new(dir.path().join("host.json")).load()?;
//! let names: Vec<_> = description.components.iter().map(|c| c.name.as_str()).collect();
//! assert_eq!(names, ["english", "french"]);
//! assert_eq!(description.components[0].env["message"], "hello");
//!
//! let mut registry = Registry::new();
//! registry.register("demo#greeter", |args: FactoryArgs| async move {
//!     let message = args.env["message"].as_str().ok_or("message must be a string")?.to_owned();
//!     Ok::<_, BoxError>(Greeter { message })
//! })?;
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! runtime.block_on(async {
//!     let tree = Tree::create(&description, Arc::new(registry)).await?;
//!     let english = tree.context().get::<Greeter>("english").ok_or("no english")?;
//!     assert_eq!(english.message, "hello");
//!     tree.shutdown().await?;
//!     assert!(tree.context().get::<Greeter>("english").is_none());
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! # Ok(())
//! # }
//! ```

pub mod component;
pub mod container;
pub mod context;
pub mod description;
pub mod error;
pub mod load;
pub mod merge;
pub mod policy;
pub mod registry;
pub mod resolve;
pub mod supervisor;
pub mod tree;

pub use component::{Component, Handle};
pub use container::{DynamicContainer, StaticContainer};
pub use context::{Context, Lifetime};
pub use description::{ComponentPath, Delta, Description, Patch};
pub use error::{BoxError, Error};
pub use load::Loader;
pub use merge::{Rename, merge};
pub use policy::Policy;
pub use registry::{DYNAMIC_CONTAINER, FactoryArgs, Registry, STATIC_CONTAINER};
pub use resolve::{Environment, ProcessEnv, resolve};
pub use supervisor::{Fatal, Supervisor};
pub use tree::Tree;
