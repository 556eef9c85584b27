//! Supervision settings, read from the top component's env.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::description::ComponentPath;
use crate::error::Error;

/// How the supervisor and containers react to failures. Durations are milliseconds in the env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `interval`: time between checkups of the whole tree.
    pub interval: Duration,
    /// `max_retries`: retries of a failed restart (after the first attempt).
    pub max_retries: u32,
    /// `retry_delay`: time between restart attempts.
    pub retry_delay: Duration,
    /// `max_hang_retries`: ticks in a row a checkup may stay pending before the process ends.
    pub max_hang_retries: u32,
    /// `die_delay`: time between an unrecoverable failure and the exit; `None` (a negative
    /// `die_delay`) reports the failure without asking for the process to exit, for tests.
    pub die_delay: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            interval: Duration::from_millis(1000),
            max_retries: 10,
            retry_delay: Duration::from_millis(1000),
            max_hang_retries: 3,
            die_delay: Some(Duration::from_millis(1000)),
        }
    }
}

impl Policy {
    /// Reads the keys present in `env`, defaulting the others.
    pub fn from_env(env: &Map<String, Value>, path: &ComponentPath) -> Result<Self, Error> {
        let defaults = Policy::default();
        let die_delay = match env.get("die_delay") {
            None => defaults.die_delay,
            Some(value) => match value.as_i64() {
                Some(ms) if ms < 0 => None,
                Some(_) => Some(Duration::from_millis(
                    millis(env, "die_delay", path)?.unwrap_or(0),
                )),
                None => return Err(invalid(path, "die_delay", value)),
            },
        };
        Ok(Policy {
            interval: millis(env, "interval", path)?
                .map_or(defaults.interval, Duration::from_millis),
            max_retries: count(env, "max_retries", path)?.unwrap_or(defaults.max_retries),
            retry_delay: millis(env, "retry_delay", path)?
                .map_or(defaults.retry_delay, Duration::from_millis),
            max_hang_retries: count(env, "max_hang_retries", path)?
                .unwrap_or(defaults.max_hang_retries),
            die_delay,
        })
    }
}

fn invalid(path: &ComponentPath, key: &str, value: &Value) -> Error {
    Error::Config {
        path: path.clone(),
        key: format!("env.{key}"),
        reason: format!("must be a whole number, not {value}"),
    }
}

fn millis(env: &Map<String, Value>, key: &str, path: &ComponentPath) -> Result<Option<u64>, Error> {
    env.get(key)
        .map(|v| v.as_u64().ok_or_else(|| invalid(path, key, v)))
        .transpose()
}

fn count(env: &Map<String, Value>, key: &str, path: &ComponentPath) -> Result<Option<u32>, Error> {
    env.get(key)
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid(path, key, v))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn reads_keys_and_defaults_the_rest() -> Result<(), Error> {
        let path = ComponentPath::top("top");
        let policy = Policy::from_env(
            &env(json!({"interval": 10, "max_retries": 2, "die_delay": -1})),
            &path,
        )?;
        assert_eq!(policy.interval, Duration::from_millis(10));
        assert_eq!(policy.max_retries, 2);
        assert_eq!(policy.die_delay, None);
        assert_eq!(policy.retry_delay, Policy::default().retry_delay);
        let zero = Policy::from_env(&env(json!({"die_delay": 0})), &path)?;
        assert_eq!(zero.die_delay, Some(Duration::ZERO));
        Ok(())
    }

    #[test]
    fn wrong_types_name_the_key() {
        let path = ComponentPath::top("top");
        for (key, value) in [
            ("interval", json!("1s")),
            ("max_retries", json!(-1)),
            ("die_delay", json!(1.5)),
        ] {
            match Policy::from_env(&env(json!({ key: value })), &path) {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, format!("env.{key}")),
                other => panic!("expected an error for {key}, got {other:?}"),
            }
        }
    }
}
