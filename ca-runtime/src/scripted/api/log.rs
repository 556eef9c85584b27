//! `this.log`: the `log` plugin in scripts. `append(value)` records an intent: after the turn's
//! checkpoint commits, the plugin appends it to its file once (by its idempotency key); if the
//! turn fails, it never happens.

use rhai::{Dynamic, Engine, EvalAltResult};

use super::{ScriptPlugin, TurnRef, from_script};
use crate::app::NewIntent;
use crate::plugins::LogPlugin;

/// `this.log`.
#[derive(Clone, Debug)]
pub struct Log(TurnRef);

/// Registers `this.log`.
#[derive(Debug)]
pub struct LogApi;

impl ScriptPlugin for LogApi {
    fn property(&self) -> &'static str {
        LogPlugin::NAME
    }

    fn handle(&self, turn: &TurnRef) -> Dynamic {
        Dynamic::from(Log(turn.clone()))
    }

    fn register(&self, engine: &mut Engine) {
        engine.register_type_with_name::<Log>("Log").register_fn(
            "append",
            |l: &mut Log, value: Dynamic| -> Result<(), Box<EvalAltResult>> {
                let payload = from_script(&value, "the logged value")?;
                l.0.with(|t| {
                    t.intents.push(NewIntent {
                        plugin: LogPlugin::NAME.to_string(),
                        payload,
                    });
                    Ok(())
                })
            },
        );
    }
}
