//! A scripted app as an [`App`]: every message runs the code version pinned for it.

use std::sync::Arc;

use semver::Version;
use serde_json::{Value, json};
use sharing_map::{AppName, MapName};

use super::engine::ScriptEngine;
use super::program::{Program, Programs};
use crate::CaError;
use crate::app::{App, CodeVersion, Cx, MethodError, MethodResult};
use crate::reads::{Pins, ReadSpec};

/// One scripted app, shared by all its CAs on a host.
#[derive(Debug)]
pub struct ScriptedApp {
    name: AppName,
    code_map: MapName,
    /// The newest version of the code map the node has, for what a message will read before
    /// its own pins exist ([`App::reads`]).
    newest: Newest,
    programs: Programs,
    engine: Arc<ScriptEngine>,
}

/// Where the newest code version comes from.
#[derive(Debug)]
enum Newest {
    /// The node agent's replica of the code map.
    Agent(node_agent::Replica),
    /// One version (tests).
    #[cfg(test)]
    Fixed(sharing_map::Snapshot),
}

impl ScriptedApp {
    pub(crate) fn new(
        name: AppName,
        code_map: MapName,
        newest: node_agent::Replica,
        engine: Arc<ScriptEngine>,
    ) -> Self {
        Self {
            name,
            code_map,
            newest: Newest::Agent(newest),
            programs: Programs::default(),
            engine,
        }
    }

    #[cfg(test)]
    pub(crate) fn fixed(
        name: AppName,
        newest: sharing_map::Snapshot,
        engine: Arc<ScriptEngine>,
    ) -> Self {
        Self {
            code_map: newest.name().clone(),
            name,
            newest: Newest::Fixed(newest),
            programs: Programs::default(),
            engine,
        }
    }

    /// The newest version the node has, compiled.
    pub fn newest(&self) -> Result<Arc<Program>, CaError> {
        match &self.newest {
            Newest::Agent(replica) => {
                let pinned = replica.pin();
                self.programs.get(self.name.as_str(), &pinned, &self.engine)
            }
            #[cfg(test)]
            Newest::Fixed(snapshot) => {
                self.programs
                    .get(self.name.as_str(), snapshot, &self.engine)
            }
        }
    }

    /// The settings the newest code declares (`app.json`'s `settings`), for plugins.
    pub fn settings(&self) -> code_map::Settings {
        self.newest()
            .map(|p| p.package.manifest.settings.clone())
            .unwrap_or_default()
    }

    /// The version pinned for this message, compiled.
    fn pinned(&self, reads: &Pins) -> Result<Arc<Program>, CaError> {
        let snapshot = reads.map(self.code_map.as_str()).ok_or_else(|| {
            CaError::exception(format!(
                "the code map {} was not pinned for this message",
                self.code_map
            ))
        })?;
        self.programs
            .get(self.name.as_str(), snapshot, &self.engine)
    }

    fn program(&self, cx: &Cx<'_>) -> MethodResult<Arc<Program>> {
        self.pinned(cx.reads)
            .map_err(|e| MethodError::Failed(e.message))
    }

    /// Runs hook `name` if the pinned code defines it.
    fn hook(&self, cx: &mut Cx<'_>, name: &str, args: &[Value]) -> Option<MethodResult<()>> {
        let program = match self.program(cx) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if !program.compiled.has(name) {
            return None;
        }
        Some(self.engine.call(&program, cx, name, args).map(|_| ()))
    }
}

impl App for ScriptedApp {
    fn state_version(&self) -> Version {
        self.newest()
            .map(|p| p.state_version().clone())
            .unwrap_or_else(|_| Version::new(0, 0, 0))
    }

    fn version_for(&self, reads: &Pins) -> Result<CodeVersion, CaError> {
        Ok(self.pinned(reads)?.code_version())
    }

    fn maps(&self) -> Vec<String> {
        self.newest()
            .map(|p| p.package.manifest.maps.clone())
            .unwrap_or_default()
    }

    fn maps_for(&self, reads: &Pins) -> Vec<String> {
        self.pinned(reads)
            .map(|p| p.package.manifest.maps.clone())
            .unwrap_or_default()
    }

    fn reads(&self) -> Vec<ReadSpec> {
        // The code map first; then what the newest code reads. (A publish landing between
        // this and the pins can leave a newly declared read unpinned for one message: that
        // read fails clearly, and the next message has it.)
        let mut specs = vec![ReadSpec::Map(self.code_map.to_string())];
        if let Ok(p) = self.newest() {
            let m = &p.package.manifest;
            specs.extend(m.reads.iter().cloned().map(ReadSpec::Map));
            specs.extend(m.aggregates.iter().cloned().map(ReadSpec::Aggregate));
        }
        specs
    }

    fn init(&self, cx: &mut Cx<'_>) -> MethodResult<()> {
        self.hook(cx, "__ca_init__", &[]).unwrap_or(Ok(()))
    }

    fn resume(&self, cx: &mut Cx<'_>) -> MethodResult<()> {
        self.hook(cx, "__ca_resume__", &[]).unwrap_or(Ok(()))
    }

    fn upgrade(&self, cx: &mut Cx<'_>, old: &Version, new: &Version) -> Option<MethodResult<()>> {
        self.hook(
            cx,
            "__ca_upgrade__",
            &[json!(old.to_string()), json!(new.to_string())],
        )
    }

    fn call(&self, cx: &mut Cx<'_>, method: &str, args: &[Value]) -> MethodResult<Value> {
        let program = self.program(cx)?;
        self.engine.call(&program, cx, method, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CaState;
    use crate::plugins::session::{Bounds, SessionPlugin, SessionTable};
    use crate::turn::{Call, Committed, Ids, Message, TurnRules, Working};
    use code_map::{Manifest, Package, Published};
    use sharing_map::{CaName, ChangeSet, MethodLimits, SharingMap, Snapshot, UpdateId};

    const APP: &str = "acme-counter";

    /// The code map after publishing `versions` in order (version n = the n-th).
    fn code_map(versions: &[(&str, &str, serde_json::Value)]) -> Vec<Snapshot> {
        let mut map = SharingMap::new(MapName::parse("acme-counter-code").expect("name"));
        let mut out = Vec::new();
        for (state_version, script, prices) in versions {
            let package = Package {
                manifest: Manifest::parse(
                    &format!(r#"{{"app": "{APP}", "state_version": "{state_version}"}}"#),
                    "app.json",
                )
                .expect("manifest"),
                scripts: [("counter.rhai".to_string(), script.to_string())].into(),
                data: [("prices".to_string(), prices.clone())].into(),
            };
            let published = Published {
                at_ms: 0,
                digest: package.digest().expect("digest"),
                rollback_of: None,
            };
            let ops = package.ops(&published, &map).expect("ops");
            let id = UpdateId::parse(&format!("p{}", map.version())).expect("id");
            let cs = ChangeSet::from_ops(map.name().clone(), map.version(), id, ops);
            map = match map.apply(&cs).expect("applies") {
                sharing_map::Applied::New(m) => m,
                other => panic!("{other:?}"),
            };
            out.push(Snapshot::new(map.clone(), None));
        }
        out
    }

    const V1: &str = r#"
fn __ca_init__() { this.state.count = 0; this.state.upgrades = 0; }
fn increment(n) { if n == () { n = 1; } this.state.count += n; this.state.count }
fn quote(item) { ["v1", this.code.get("prices", item)] }
fn get() { this.state }
fn refuse() { this.state.count = 99; throw app_error("no stock"); }
fn spin() { loop {} }
fn half() { let i = 0; while i < 12000 { i += 1; } i }
fn log(text) { this.log.append(text); this.state.count }
private fn helper() { 1 }
fn shout(text) { this.session.notify([text]); this.session.outq().len() }
fn start() { this.session.begin() }
fn buy(nonce, item) { if !this.session.remember(nonce, item) { throw app_error("stale"); } item }
fn finish(nonce) { this.session.end(nonce) }
fn sessions() { [this.session.session_id(), this.session.all_session_ids()] }
fn __ca_upgrade__(from, to) {
    if from.starts_with("2.") { this.state.count = this.state.clicks; this.state.remove("clicks"); }
    this.state.upgrades += 1;
}
"#;

    const V2: &str = r#"
fn increment(n) { if n == () { n = 1; } this.state.clicks += 2 * n; this.state.clicks }
fn quote(item) { ["v2", this.code.get("prices", item)] }
fn get() { this.state }
fn __ca_upgrade__(from, to) {
    this.state.clicks = this.state.count; this.state.remove("count");
    this.state.upgrades += 1;
}
"#;

    struct Fixture {
        app: ScriptedApp,
        working: Working,
        scratch: serde_json::Map<String, Value>,
        rules: TurnRules,
        names: (AppName, CaName),
    }

    impl Fixture {
        fn new(newest: &Snapshot, limits: MethodLimits) -> Self {
            let map = |local: &str| {
                SharingMap::new(MapName::parse(&format!("alice-phone-{local}")).expect("map"))
            };
            let committed = Committed {
                state_map: map("castate"),
                state: CaState::default(),
                maps: Default::default(),
            };
            let mut rules = TurnRules::default();
            rules.intent_plugins.insert("log".into());
            rules.turn_plugins.push(SessionPlugin::new(
                Bounds::default(),
                crate::plugins::session::Listeners::new(),
            ));
            let names = (
                AppName::parse(APP).expect("app"),
                CaName::parse("alice-phone").expect("ca"),
            );
            let app = ScriptedApp::fixed(
                names.0.clone(),
                newest.clone(),
                Arc::new(ScriptEngine::new(limits)),
            );
            let mut f = Self {
                app,
                working: Working::from_committed(&committed),
                scratch: Default::default(),
                rules,
                names,
            };
            let pins = Pins::default().with_map(newest.clone());
            let (app, ca) = f.names.clone();
            f.working
                .run_init(
                    &f.app,
                    Ids { app: &app, ca: &ca },
                    &mut f.scratch,
                    &pins,
                    &f.rules,
                )
                .expect("init");
            f
        }

        fn send(&mut self, code: &Snapshot, calls: &[(&str, Value)]) -> Result<Value, CaError> {
            let calls = calls
                .iter()
                .map(|(m, a)| Call {
                    method: m.to_string(),
                    args: a.as_array().cloned().unwrap_or_default(),
                })
                .collect();
            let pins = Pins::default().with_map(code.clone());
            let (app, ca) = self.names.clone();
            self.working.run_message(
                &self.app,
                Ids { app: &app, ca: &ca },
                &mut self.scratch,
                &pins,
                &Message::from_client(calls, None, ca.clone()),
                &self.rules,
            )
        }

        fn state(&self) -> Value {
            Value::Object(self.working.state.state.clone())
        }
    }

    #[test]
    fn each_message_runs_its_pinned_version_and_upgrades_once_per_change() {
        let v = code_map(&[
            ("1.0.0", V1, json!({"apple": 1})),
            ("2.0.0", V2, json!({"apple": 2})),
            ("1.0.0", V1, json!({"apple": 1})),
        ]);
        let mut f = Fixture::new(&v[0], MethodLimits::default());
        assert_eq!(f.send(&v[0], &[("increment", json!([5]))]), Ok(json!(5)));
        // Method and data of one version, in every call of the message.
        assert_eq!(
            f.send(
                &v[0],
                &[("quote", json!(["apple"])), ("quote", json!(["apple"]))]
            ),
            Ok(json!(["v1", 1]))
        );
        // The next message pins version 2: the migration runs first, in the same turn, once.
        assert_eq!(f.send(&v[1], &[("increment", json!([]))]), Ok(json!(7)));
        assert_eq!(
            f.send(&v[1], &[("quote", json!(["apple"]))]),
            Ok(json!(["v2", 2]))
        );
        assert_eq!(f.state(), json!({"clicks": 7, "upgrades": 1}));
        let meta = f.working.state.meta.clone().expect("meta");
        assert_eq!(
            (meta.state_version.to_string(), meta.code_version),
            ("2.0.0".into(), Some(2))
        );
        // A failed message rolls its upgrade back with it: the next one upgrades again, once.
        let e = f
            .send(&v[2], &[("increment", json!([1])), ("refuse", json!([]))])
            .expect_err("refused");
        assert_eq!(
            (e.code, e.message.as_str()),
            (ca_client::ErrorCode::AppError, "no stock")
        );
        assert_eq!(f.state(), json!({"clicks": 7, "upgrades": 1}));
        assert_eq!(f.send(&v[2], &[("increment", json!([1]))]), Ok(json!(8)));
        assert_eq!(
            f.send(&v[2], &[("get", json!([]))]),
            Ok(json!({"count": 8, "upgrades": 2}))
        );
    }

    #[test]
    fn scripts_fail_as_exceptions_with_their_place_and_limits_hold_per_turn() {
        let v = code_map(&[("1.0.0", V1, json!({}))]);
        let mut f = Fixture::new(
            &v[0],
            MethodLimits {
                max_operations: 100_000,
                ..Default::default()
            },
        );
        f.send(&v[0], &[("increment", json!([1]))]).expect("runs");
        let e = f
            .send(&v[0], &[("increment", json!([1])), ("spin", json!([]))])
            .expect_err("limit");
        assert_eq!(e.code, ca_client::ErrorCode::Exception);
        assert!(
            e.message.contains("limit exceeded") && e.message.contains("operations"),
            "{e}"
        );
        // One call within the budget runs; two in one turn are over it.
        f.send(&v[0], &[("half", json!([]))])
            .expect("within the budget");
        let e = f
            .send(&v[0], &[("half", json!([])), ("half", json!([]))])
            .expect_err("over");
        assert!(e.message.contains("in one turn"), "{e}");
        for (method, code) in [
            ("helper", ca_client::ErrorCode::Invalid),
            ("nope", ca_client::ErrorCode::Invalid),
        ] {
            let e = f.send(&v[0], &[(method, json!([]))]).expect_err(method);
            assert_eq!(e.code, code, "{method}: {e}");
        }
        let e = f
            .send(&v[0], &[("increment", json!([{"a": 1}]))])
            .expect_err("type");
        assert!(
            e.message.contains("counter.rhai:3") && e.message.contains("fn increment"),
            "{e}"
        );
        assert_eq!(f.state(), json!({"count": 1, "upgrades": 0}));
        // Intents recorded by a script commit with the turn or vanish with it.
        assert_eq!(f.send(&v[0], &[("log", json!(["hi"]))]), Ok(json!(1)));
        assert_eq!(f.working.new_intents.len(), 1);
        let _ = f.send(&v[0], &[("log", json!(["lost"])), ("refuse", json!([]))]);
        assert_eq!(f.working.new_intents.len(), 1);
    }

    #[test]
    fn scripts_reach_the_session_plugin_through_this_session() {
        let v = code_map(&[("1.0.0", V1, json!({}))]);
        let mut f = Fixture::new(&v[0], MethodLimits::default());
        // Notifications join the queue when the turn ends: a turn sees the ones before it.
        assert_eq!(f.send(&v[0], &[("shout", json!(["a"]))]), Ok(json!(0)));
        assert_eq!(
            f.send(&v[0], &[("shout", json!(["b"])), ("shout", json!(["c"]))]),
            Ok(json!(1))
        );
        let _ = f.send(&v[0], &[("shout", json!(["lost"])), ("refuse", json!([]))]);
        let table = SessionTable::from_value(&f.working.state.plugins["session"]).expect("table");
        let queued: Vec<Value> = table.outq("default").into_iter().map(|n| n.args).collect();
        assert_eq!(queued, vec![json!(["a"]), json!(["b"]), json!(["c"])]);
        assert_eq!(
            f.send(&v[0], &[("sessions", json!([]))]),
            Ok(json!(["default", ["default"]]))
        );
        // Exactly-once instances: the nonce holds from the next turn; a stale one is refused.
        let begun = f.send(&v[0], &[("start", json!([]))]).expect("begin");
        assert_eq!(begun["memento"], Value::Null);
        let nonce = begun["nonce"].clone();
        assert_eq!(
            f.send(&v[0], &[("buy", json!([nonce, "apple"]))]),
            Ok(json!("apple"))
        );
        let e = f
            .send(&v[0], &[("buy", json!(["stale", "pear"]))])
            .expect_err("stale");
        assert_eq!(e.code, ca_client::ErrorCode::AppError);
        let again = f.send(&v[0], &[("start", json!([]))]).expect("begin");
        assert_eq!(again["memento"], json!("apple"));
        let nonce = again["nonce"].clone();
        assert_eq!(
            f.send(&v[0], &[("finish", json!([nonce]))]),
            Ok(json!(true))
        );
        assert_eq!(
            f.send(&v[0], &[("start", json!([]))]).expect("begin")["memento"],
            Value::Null
        );
    }
}
