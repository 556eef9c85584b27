//! Plugins (DESIGN.md §9.3). Two kinds of hooks:
//! - [`TurnPlugin`](crate::turn::TurnPlugin): takes part in every turn over state of its own
//!   in the checkpoint (sessions, timers, de-duplication windows);
//! - [`IntentPlugin`]: carries out intents after the turn that recorded them committed. It gets
//!   every intent recorded for it, at least once, with its idempotency key, and makes a repeat
//!   harmless. It may answer the CA with a message ([`Courier::deliver`], with
//!   [`Message::completes`](crate::turn::Message) naming the intent, so the answer is taken
//!   exactly once).
//!
//! One file (or folder) per plugin: [`log`], [`session`], [`timers`], [`http`], [`events`].

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use sharing_map::{AppName, CaName};

use crate::CaError;
use crate::activation::Reply;
use crate::checkpoint::Intent;
use crate::turn::Message;

pub mod events;
pub mod http;
pub mod log;
pub mod session;
pub mod timers;

pub use log::LogPlugin;

/// Carries out intents of one kind.
pub trait IntentPlugin: Send + Sync + std::fmt::Debug + 'static {
    /// The name intents name it by.
    fn name(&self) -> &str;
    /// Carries out `intent`; a repeat of an intent already carried out must change nothing.
    /// `courier` sends messages to CAs (the answer of an external call, say).
    fn carry_out(
        &self,
        intent: Intent,
        courier: Arc<dyn Courier>,
    ) -> BoxFuture<'static, Result<(), String>>;
}

/// Sends messages to CAs on behalf of the runtime and its plugins (the host implements it). A
/// system message may call system methods (`__ca_*`); its reply comes once its turn committed.
pub trait Courier: Send + Sync + std::fmt::Debug + 'static {
    /// Delivers `message` to CA `ca` of app `app`, activating it if need be.
    fn deliver(
        &self,
        app: AppName,
        ca: CaName,
        message: Message,
    ) -> BoxFuture<'static, Result<Reply, CaError>>;
}

/// The plugins of a host, by name.
#[derive(Clone, Debug, Default)]
pub struct Plugins {
    by_name: BTreeMap<String, Arc<dyn IntentPlugin>>,
}

impl Plugins {
    /// Adds `plugin`.
    pub fn with(mut self, plugin: Arc<dyn IntentPlugin>) -> Self {
        self.by_name.insert(plugin.name().to_string(), plugin);
        self
    }
    /// The plugin named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn IntentPlugin>> {
        self.by_name.get(name)
    }
    /// Whether a plugin named `name` is there.
    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
    /// The names of the plugins.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
