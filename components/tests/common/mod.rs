//! Small example components and the world they report to, shared by the scenario tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use components::{BoxError, Component, Description, FactoryArgs, Registry};
use futures::future::BoxFuture;
use serde_json::Value;

/// A seeded xorshift64* generator: deterministic "random" failures.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % 1000 < per_mille
    }
}

/// What the example components report: creations and shutdowns in order, and switches tests
/// flip to make a component fail.
#[derive(Debug, Default)]
pub struct World {
    log: Mutex<Vec<String>>,
    created: Mutex<BTreeMap<String, u32>>,
    /// Checkups each path still has to fail (`u32::MAX`: until switched off).
    failing: Mutex<BTreeMap<String, u32>>,
    breaks: Mutex<u32>,
    rng: Mutex<Option<Rng>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl World {
    pub fn new() -> Arc<Self> {
        Arc::new(World::default())
    }

    pub fn seeded(seed: u64) -> Arc<Self> {
        let world = World::default();
        *lock(&world.rng) = Some(Rng::new(seed));
        Arc::new(world)
    }

    pub fn record(&self, event: String) {
        lock(&self.log).push(event);
    }

    pub fn log(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// Log entries starting with `prefix`, prefix removed.
    pub fn events(&self, prefix: &str) -> Vec<String> {
        self.log()
            .iter()
            .filter_map(|e| e.strip_prefix(prefix).map(str::to_owned))
            .collect()
    }

    fn count_creation(&self, path: &str) -> u32 {
        let mut created = lock(&self.created);
        let n = created.entry(path.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// How many times the factory ran for this path (including failed runs).
    pub fn created(&self, path: &str) -> u32 {
        lock(&self.created).get(path).copied().unwrap_or(0)
    }

    /// Makes the probe at `path` fail every checkup until switched off.
    pub fn set_failing(&self, path: &str, failing: bool) {
        let mut map = lock(&self.failing);
        if failing {
            map.insert(path.to_owned(), u32::MAX);
        } else {
            map.remove(path);
        }
    }

    /// Makes the next `n` checkups of the probe at `path` (whichever instance) fail.
    pub fn fail_next(&self, path: &str, n: u32) {
        lock(&self.failing).insert(path.to_owned(), n);
    }

    fn take_failure(&self, path: &str) -> bool {
        let mut map = lock(&self.failing);
        match map.get_mut(path) {
            Some(&mut u32::MAX) => true,
            Some(&mut 0) | None => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }

    pub fn breaks(&self) -> u32 {
        *lock(&self.breaks)
    }

    fn chance(&self, per_mille: u64) -> bool {
        lock(&self.rng)
            .as_mut()
            .is_some_and(|rng| rng.chance(per_mille))
    }
}

fn int(args: &FactoryArgs, key: &str) -> Result<i64, BoxError> {
    args.env
        .get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("{}: env.{key} must be an integer", args.path).into())
}

/// Logs its shutdown; `checkup` fails while the test has flipped its switch.
#[derive(Debug)]
struct Probe {
    world: Arc<World>,
    path: String,
}

impl Probe {
    fn new(world: &Arc<World>, args: &FactoryArgs) -> Self {
        let path = args.path.to_string();
        world.record(format!("create {path}"));
        Probe {
            world: world.clone(),
            path,
        }
    }

    fn checkup(&self) -> Result<(), BoxError> {
        if self.world.take_failure(&self.path) {
            return Err(format!("{} was told to fail", self.path).into());
        }
        Ok(())
    }

    fn shutdown(&self) {
        self.world.record(format!("shutdown {}", self.path));
    }
}

/// The greeter: a message and a number.
#[derive(Debug)]
pub struct Greeter {
    probe: Probe,
    pub message: String,
    pub number: i64,
}

impl Greeter {
    pub fn greet(&self) -> String {
        format!("{} #{}", self.message, self.number)
    }
}

impl Component for Greeter {
    fn checkup(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { self.probe.checkup() })
    }
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async {
            self.probe.shutdown();
            Ok(())
        })
    }
}

/// A component with children: checks they all exist before it does and that it is not yet
/// registered itself.
#[derive(Debug)]
pub struct Group {
    probe: Probe,
}

impl Component for Group {
    fn checkup(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { self.probe.checkup() })
    }
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async {
            self.probe.shutdown();
            Ok(())
        })
    }
}

/// Finds a sibling created before it and a component of the top, at creation.
#[derive(Debug)]
pub struct Finder {
    probe: Probe,
    pub sibling_says: String,
    pub top_says: String,
}

impl Component for Finder {
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async {
            self.probe.shutdown();
            Ok(())
        })
    }
}

/// Breaks at random (seeded): creation fails with `create_per_mille`, and each checkup breaks it
/// for good with `break_per_mille` (only a restart repairs it).
#[derive(Debug)]
pub struct Flaky {
    probe: Probe,
    break_per_mille: u64,
    broken: Mutex<bool>,
}

impl Component for Flaky {
    fn checkup(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async {
            let mut broken = lock(&self.broken);
            if !*broken && self.probe.world.chance(self.break_per_mille) {
                *broken = true;
                *lock(&self.probe.world.breaks) += 1;
            }
            if *broken {
                return Err(format!("{} broke", self.probe.path).into());
            }
            Ok(())
        })
    }
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async {
            self.probe.shutdown();
            Ok(())
        })
    }
}

/// Healthy for `healthy_checkups` checkups, then fails; every creation after the first fails.
#[derive(Debug)]
pub struct Fragile {
    probe: Probe,
    healthy_checkups: i64,
    checkups: Mutex<i64>,
}

impl Component for Fragile {
    fn checkup(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async {
            let mut n = lock(&self.checkups);
            *n += 1;
            if *n > self.healthy_checkups {
                return Err("the disk is gone".into());
            }
            Ok(())
        })
    }
    fn shutdown(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async {
            self.probe.shutdown();
            Ok(())
        })
    }
}

/// Answers `healthy_checkups` checkups, then never again.
#[derive(Debug)]
pub struct Hanging {
    healthy_checkups: i64,
    checkups: Mutex<i64>,
}

impl Component for Hanging {
    fn checkup(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async {
            let hang = {
                let mut n = lock(&self.checkups);
                *n += 1;
                *n > self.healthy_checkups
            };
            if hang {
                futures::future::pending::<()>().await;
            }
            Ok(())
        })
    }
}

/// The example modules: `test#greeter`, `test#group`, `test#finder`, `test#flaky`,
/// `test#fragile`, `test#hanging`.
pub fn registry(world: &Arc<World>) -> Result<Arc<Registry>, components::Error> {
    let mut registry = Registry::new();
    let w = world.clone();
    registry.register("test#greeter", move |args: FactoryArgs| {
        let world = w.clone();
        async move {
            world.count_creation(&args.path.to_string());
            let message = args
                .env
                .get("message")
                .and_then(Value::as_str)
                .ok_or("env.message must be a string")?
                .to_owned();
            let number = int(&args, "number")?;
            Ok::<_, BoxError>(Greeter {
                probe: Probe::new(&world, &args),
                message,
                number,
            })
        }
    })?;
    let w = world.clone();
    registry.register("test#group", move |args: FactoryArgs| {
        let world = w.clone();
        async move {
            world.count_creation(&args.path.to_string());
            let expected: Vec<String> = args
                .description
                .components
                .iter()
                .map(|c| c.name.clone())
                .collect();
            let found = args
                .children
                .as_ref()
                .map(|c| c.names())
                .unwrap_or_default();
            if found != expected {
                return Err(format!("children {found:?} instead of {expected:?}").into());
            }
            if args.context.handle(args.name()).is_some() {
                return Err("registered before its factory ran".into());
            }
            Ok::<_, BoxError>(Group {
                probe: Probe::new(&world, &args),
            })
        }
    })?;
    let w = world.clone();
    registry.register("test#finder", move |args: FactoryArgs| {
        let world = w.clone();
        async move {
            world.count_creation(&args.path.to_string());
            let sibling = args
                .env
                .get("sibling")
                .and_then(Value::as_str)
                .ok_or("env.sibling")?;
            let top = args
                .env
                .get("top")
                .and_then(Value::as_str)
                .ok_or("env.top")?;
            let sibling_says = args
                .context
                .get::<Greeter>(sibling)
                .ok_or("no sibling greeter")?
                .greet();
            let top_says = args
                .context
                .top()
                .get::<Greeter>(top)
                .ok_or("no top greeter")?
                .greet();
            Ok::<_, BoxError>(Finder {
                probe: Probe::new(&world, &args),
                sibling_says,
                top_says,
            })
        }
    })?;
    let w = world.clone();
    registry.register("test#flaky", move |args: FactoryArgs| {
        let world = w.clone();
        async move {
            world.count_creation(&args.path.to_string());
            if world.chance(int(&args, "create_per_mille")?.unsigned_abs()) {
                return Err("random creation failure".into());
            }
            Ok::<_, BoxError>(Flaky {
                probe: Probe::new(&world, &args),
                break_per_mille: int(&args, "break_per_mille")?.unsigned_abs(),
                broken: Mutex::new(false),
            })
        }
    })?;
    let w = world.clone();
    registry.register("test#fragile", move |args: FactoryArgs| {
        let world = w.clone();
        async move {
            if world.count_creation(&args.path.to_string()) > 1 {
                return Err("cannot open the disk".into());
            }
            Ok::<_, BoxError>(Fragile {
                probe: Probe::new(&world, &args),
                healthy_checkups: int(&args, "healthy_checkups")?,
                checkups: Mutex::new(0),
            })
        }
    })?;
    let w = world.clone();
    registry.register("test#hanging", move |args: FactoryArgs| {
        let world = w.clone();
        async move {
            world.count_creation(&args.path.to_string());
            Ok::<_, BoxError>(Hanging {
                healthy_checkups: int(&args, "healthy_checkups")?,
                checkups: Mutex::new(0),
            })
        }
    })?;
    Ok(Arc::new(registry))
}

pub fn description(value: Value) -> Result<Description, components::Error> {
    Description::from_value(&value, "<test>")
}
