//! spinectl's command line.
//!
//! Names (maps, apps) and update ids are taken as text and validated when the command runs, so a
//! bad one fails like any other error: one `error:` line quoting the name and the rule it broke.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The endpoints `spine dev` listens on.
pub const DEV_ENDPOINTS: &str = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";

const EXAMPLES: &str = "\
Examples:
  spine dev &                                    # a local 3-node cluster
  spinectl map create alice-phone-prices
  spinectl map put alice-phone-prices apple 3 pear '{\"eur\": 2}'
  spinectl map put alice-phone-prices total --method 'this.get(\"apple\") * n' --args n
  spinectl map get alice-phone-prices
  spinectl map call alice-phone-prices total 2
  spinectl map watch alice-phone- --prefix       # Ctrl-C to stop
  spinectl --output json map list | jq .
  spinectl cluster status --all";

/// Read, write and watch Sharing Maps, and manage a Spine cluster.
///
/// Any node accepts any request; spinectl tries the endpoints in turn until one answers or the
/// timeout passes. On failure it prints one `error:` line and exits with status 1.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(name = "spinectl", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Spine endpoints, comma-separated (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        env = "SPINE_ENDPOINTS",
        value_delimiter = ',',
        default_value = DEV_ENDPOINTS
    )]
    pub endpoints: Vec<String>,

    /// The app whose maps to use (publisher-app).
    #[arg(long, global = true, env = "SPINE_APP", default_value = "dev-app")]
    pub app: String,

    /// Output format: human-readable text, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,

    /// Token presented with every request (URL-safe base64) [default: --token-file, else
    /// ./spine-data/admin.token when `spine dev` runs in this directory]
    #[arg(long, global = true, env = "SPINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the token (`spine init` writes an admin token to DIR/admin.token).
    #[arg(long, global = true, env = "SPINE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// Connect with TLS, trusting this CA certificate (PEM; `spine dev --tls` writes
    /// spine-data/tls/ca.pem).
    #[arg(long, global = true, env = "SPINE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for mutual TLS; needs --tls-key and --tls-ca.
    #[arg(long, global = true, env = "SPINE_TLS_CERT", value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "SPINE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// Seconds a request may take, retries on other endpoints included.
    #[arg(long, global = true, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Text for people.
    Human,
    /// JSON on stdout (JSON lines for `map watch`).
    Json,
}

/// Top-level commands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Create, read, write, watch and call Sharing Maps.
    #[command(subcommand)]
    Map(MapCommand),
    /// Show the Raft group and change its membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Grant and revoke roles in linked ACL maps; check and explain what a principal has.
    #[command(subcommand, after_help = ACL_HELP)]
    Acl(AclCommand),
    /// Issue, attenuate (narrow) and inspect access tokens.
    #[command(subcommand, after_help = TOKEN_HELP)]
    Token(TokenCommand),
    /// Publish scripted apps as code maps, list their versions, roll back.
    #[command(subcommand, after_help = APP_HELP)]
    App(AppCommand),
    /// Measure write throughput and commit latency: concurrent writers, each updating its own
    /// map with compare-and-swap change sets, for a while.
    #[command(after_help = LOAD_HELP)]
    Load(LoadArgs),
}

const LOAD_HELP: &str = "\
Each writer first creates its map, PREFIX-w<i>-r<run id> (create-if-absent), then until the time
is up sends one change set after another at the version its last one produced, each putting the
key `k` to a VALUE_BYTES-long JSON string under a fresh update id. A version conflict makes it
re-read the map's version; other failures are counted and the same change set is sent again (the
Spine treats a repeat of a map's last update id as success).

Latency is from the first send of an update to its acknowledgement, retries included. The longest
gap is the longest time in which no writer got an acknowledgement (the start and the end of the
run count as acknowledgements): kill the leader during a run to measure failover.

Progress goes to stderr once a second; the report to stdout. Ctrl-C stops early and reports.

Examples:
  spinectl load --writers 64 --seconds 30
  spinectl --output json load --writers 1 --value-bytes 4096 | jq .ops_per_sec";

/// App commands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum AppCommand {
    /// Check that every script compiles, then publish the directory as the next version of the
    /// app's code map (a broken script is refused before anything is written); prints the
    /// version.
    Publish {
        /// The app directory (app.json, *.rhai, data/*.json).
        dir: std::path::PathBuf,
    },
    /// List the published versions the Spine still has: version, state version, time, digest.
    Versions {
        /// The app [default: --app].
        app: Option<String>,
    },
    /// Publish the content of an earlier version again, as a new version: CAs move back at
    /// their next message, running the upgrade hook the restored code defines.
    Rollback {
        /// The app [default: --app].
        app: Option<String>,
        /// The version to go back to.
        #[arg(long, value_name = "VERSION")]
        to: u64,
    },
}

/// Map commands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum MapCommand {
    /// Create a map (version 0) unless it exists; an existing map is left unchanged.
    #[command(
        after_help = "Example:\n  echo '{\"apple\": 3}' | spinectl map create alice-phone-prices --from -"
    )]
    Create {
        /// The map's name, owner-local-map (e.g. alice-phone-prices).
        map: String,
        /// Initial content: a JSON object of key -> JSON value, from a file or `-` for stdin.
        #[arg(long, value_name = "FILE|-")]
        from: Option<String>,
    },
    /// Print a map (or some keys of it) at its current version.
    Get {
        /// The map's name.
        map: String,
        /// Only these keys.
        keys: Vec<String>,
        /// Accept the answering node's possibly stale state instead of a linearizable read.
        #[arg(long)]
        stale_ok: bool,
    },
    /// Set keys to JSON values (or one key to a method) in one atomic update; prints the new
    /// version.
    #[command(after_help = "\
A VALUE that is not valid JSON is taken as a string: `spinectl map put m k hello` stores \"hello\".

Examples:
  spinectl map put alice-phone-prices apple 3 note 'fresh today'
  spinectl map put alice-phone-prices apple 4 --version 1     # only if the map is at version 1
  spinectl map put alice-phone-prices total --method 'this.get(\"apple\") * n' --args n")]
    Put(PutArgs),
    /// Remove keys in one atomic update; prints the new version.
    Rm {
        /// The map's name.
        map: String,
        /// Keys to remove.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Version and update id.
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Apply change sets from a file: one JSON change set or an array of them (maps of one
    /// writer; all are applied or none).
    #[command(after_help = "\
A change set is {\"map\": NAME, \"version\": V, \"update_id\": ID, \"remove\": [KEY...],
\"put\": [[KEY, {\"value\": JSON}], [KEY, {\"method\": {\"args\": [NAME...], \"body\": SCRIPT}}]]};
it applies only if the map is at version V.")]
    Apply {
        /// The file, or `-` for stdin.
        #[arg(value_name = "FILE|-")]
        file: String,
    },
    /// List the app's maps, optionally only those whose names start with a prefix.
    List {
        /// Name prefix.
        prefix: Option<String>,
        /// Accept the answering node's possibly stale state.
        #[arg(long)]
        stale_ok: bool,
    },
    /// Print updates of a map (or of every map under a prefix) as they commit, until Ctrl-C.
    Watch {
        /// The map's name, or a name prefix with --prefix.
        map: String,
        /// MAP is a prefix: watch every map whose name starts with it.
        #[arg(long)]
        prefix: bool,
        /// Start with the updates after this version instead of a snapshot.
        #[arg(long, value_name = "VERSION")]
        from: Option<u64>,
    },
    /// Print the retained change sets of a map.
    History {
        /// The map's name.
        map: String,
        /// Only change sets after this version.
        #[arg(long, value_name = "VERSION", default_value_t = 0)]
        after: u64,
    },
    /// Run a method of a map locally on its current version and print the result.
    Call {
        /// The map's name.
        map: String,
        /// The key the method is stored under.
        method: String,
        /// Arguments: JSON values (text that is not JSON is taken as a string).
        #[arg(value_name = "ARG_JSON", allow_negative_numbers = true)]
        args: Vec<String>,
    },
}

/// `map put`'s arguments.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct PutArgs {
    /// The map's name.
    pub map: String,
    /// KEY VALUE pairs; with --method, the one KEY to store the method under.
    #[arg(
        value_name = "KEY VALUE",
        required = true,
        allow_negative_numbers = true
    )]
    pub pairs: Vec<String>,
    /// Store a method (a Rhai script; `this` is the map) instead of a value.
    #[arg(long, value_name = "BODY")]
    pub method: Option<String>,
    /// The method's argument names, comma-separated.
    #[arg(long, value_name = "NAMES", value_delimiter = ',', requires = "method")]
    pub args: Vec<String>,
    /// Version and update id.
    #[command(flatten)]
    pub write: WriteArgs,
}

/// Options of writes.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct WriteArgs {
    /// Apply only if the map is at this version (one compare-and-swap, no retry). Without it,
    /// the current version is read and the write retried on conflicts.
    #[arg(long, value_name = "VERSION")]
    pub version: Option<u64>,
    /// The update's id (default: a random `spinectl-…`); repeating the map's last id is a no-op
    /// success.
    #[arg(long, value_name = "ID")]
    pub update_id: Option<String>,
}

/// `load`'s arguments.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct LoadArgs {
    /// Concurrent writers; each writes its own map.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub writers: u32,
    /// How long to write, in seconds.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_seconds)]
    pub seconds: Duration,
    /// Length of the JSON string each update puts (the JSON text has 2 more bytes: the quotes).
    #[arg(long, value_name = "B", default_value_t = 256)]
    pub value_bytes: usize,
    /// The first part (the owner) of the maps' names: PREFIX-w<i>-r<run id>.
    #[arg(long, value_name = "PREFIX", default_value = "load")]
    pub maps_prefix: String,
}

/// Cluster commands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum ClusterCommand {
    /// Show the members, the leader, terms and indexes.
    Status {
        /// Ask every endpoint instead of the first that answers.
        #[arg(long)]
        all: bool,
    },
    /// Add a node as a learner (it receives the log but does not vote).
    Add {
        /// The new node's Raft id.
        id: u64,
        /// The address it serves on (host:port).
        addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The node's Raft id.
        id: u64,
    },
    /// Remove a node from the group.
    Remove {
        /// The node's Raft id.
        id: u64,
    },
    /// Hand leadership to another voter.
    Transfer {
        /// The node's Raft id.
        id: u64,
    },
}

const ACL_HELP: &str = "\
An ACL map's keys are principals (a user `alice`, or a CA `alice-phone`) and its values their
roles (a JSON array of strings). `__link_key__` lists the maps whose grants it includes; check and
explain follow those links from the map you name (cycles are fine). A CA has what its full name
or its owner has.

Examples:
  spinectl acl grant acme-shop-staff alice-phone clerk
  spinectl acl link acme-admin-roles acme-shop-staff
  spinectl acl check acme-admin-roles alice-phone clerk
  spinectl acl explain acme-admin-roles alice-phone
  spinectl acl revoke acme-shop-staff alice-phone clerk";

const APP_HELP: &str = "\
A scripted app is a directory: app.json (the app's name, its state version, settings, the maps
its CAs write and read), its methods in *.rhai files, and optional data entries in data/*.json.
Publishing writes the whole directory as one atomic update of the app's code map <app>-code:
every CA of the app runs the new code (and data) from its next message on. It needs a token
that speaks for the app's own CA (for app acme-counter: CA acme-counter), e.g.
  spinectl token issue --app-publisher acme --app-local counter --ca acme-counter

Examples:
  spinectl app publish examples/counter
  spinectl app versions acme-counter
  spinectl app rollback acme-counter --to 1";

const TOKEN_HELP: &str = "\
A token carries up to five constraints (app publisher, app local name, CA owner, CA local name,
expiry); a missing one means any. `issue` signs with the root private key (spine dev keeps it in
spine-data/root.key); anyone holding a token can `attenuate` it offline to a narrower one; a
request that would widen it is refused. Tokens go to spinectl with --token or SPINE_TOKEN.

Examples:
  spinectl token issue --app-publisher acme --app-local shop --ca alice-phone --expires-in 24h
  spinectl token attenuate \"$TOKEN\" --expires-in 1h
  spinectl token inspect \"$TOKEN\"";

/// ACL commands; maps live in the `--app` namespace.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum AclCommand {
    /// Give a principal a role in an ACL map (created if missing).
    Grant {
        /// The ACL map (owner-local-map).
        map: String,
        /// A user (alice) or a CA (alice-phone).
        principal: String,
        /// The role.
        role: String,
    },
    /// Take a role (or, without ROLE, every role) from a principal in an ACL map.
    Revoke {
        /// The ACL map.
        map: String,
        /// A user or a CA.
        principal: String,
        /// The role; all roles when left out.
        role: Option<String>,
    },
    /// Make an ACL map include the grants of another map (and of what that one links to).
    Link {
        /// The map that links.
        map: String,
        /// The map it includes.
        target: String,
    },
    /// Remove a link.
    Unlink {
        /// The map that links.
        map: String,
        /// The map it no longer includes.
        target: String,
    },
    /// Whether a principal has a role (any role, without ROLE) in the aggregate rooted at MAP.
    Check {
        /// The root ACL map.
        map: String,
        /// A user or a CA.
        principal: String,
        /// The role.
        role: Option<String>,
    },
    /// The roles a principal has in the aggregate rooted at MAP and the chain of links behind
    /// each.
    Explain {
        /// The root ACL map.
        map: String,
        /// A user or a CA.
        principal: String,
    },
}

/// Constraints of a token; each left out means any.
#[derive(Args, Debug, Clone, PartialEq, Default)]
pub struct ConstraintArgs {
    /// Only apps of this publisher (`acme` in `acme-shop`).
    #[arg(long)]
    pub app_publisher: Option<String>,
    /// Only apps with this local name (`shop` in `acme-shop`).
    #[arg(long)]
    pub app_local: Option<String>,
    /// Only this CA (owner-local): sets both CA constraints.
    #[arg(long, conflicts_with_all = ["ca_owner", "ca_local"])]
    pub ca: Option<String>,
    /// Only CAs of this owner.
    #[arg(long)]
    pub ca_owner: Option<String>,
    /// Only CAs with this local name.
    #[arg(long)]
    pub ca_local: Option<String>,
    /// Valid for this long from now: 90s, 30m, 24h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires_in: Option<Duration>,
}

/// Token commands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum TokenCommand {
    /// Issue a token signed by the root private key; prints it.
    Issue {
        /// The root private key.
        #[arg(
            long,
            env = "SPINE_ROOT_KEY_FILE",
            default_value = "spine-data/root.key"
        )]
        root_key_file: std::path::PathBuf,
        #[command(flatten)]
        constraints: ConstraintArgs,
    },
    /// Derive a narrower token, offline; prints it. Refused if it would widen the token.
    Attenuate {
        /// The token, or `-` to read it from stdin.
        token: String,
        /// The root public key.
        #[arg(
            long,
            env = "SPINE_ROOT_PUB_FILE",
            default_value = "spine-data/root.pub"
        )]
        root_pub_file: std::path::PathBuf,
        #[command(flatten)]
        constraints: ConstraintArgs,
    },
    /// Check a token's signature and print its constraints.
    Inspect {
        /// The token, or `-` to read it from stdin.
        token: String,
        /// The root public key.
        #[arg(
            long,
            env = "SPINE_ROOT_PUB_FILE",
            default_value = "spine-data/root.pub"
        )]
        root_pub_file: std::path::PathBuf,
    },
}

/// `90s`, `30m`, `24h`, `7d`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(unit)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds"))
}

/// A command-line value: JSON if it parses as JSON, otherwise the text as a JSON string.
pub fn parse_value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("spinectl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_default_to_spine_dev() -> Result<(), clap::Error> {
        let cli = parse(&["map", "get", "bob-tv-x"])?;
        assert_eq!(
            cli.endpoints,
            ["127.0.0.1:7401", "127.0.0.1:7402", "127.0.0.1:7403"]
        );
        assert_eq!(cli.app, "dev-app");
        assert_eq!(cli.output, Output::Human);
        assert_eq!(cli.timeout, Duration::from_secs(10));
        let cli = parse(&[
            "map",
            "list",
            "--endpoints",
            "h:1,h:2",
            "--output",
            "json",
            "--timeout",
            "0.5",
            "--app",
            "acme-shop",
        ])?;
        assert_eq!(cli.endpoints, ["h:1", "h:2"]);
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert_eq!(cli.app, "acme-shop");
        assert!(parse(&["--timeout", "-1", "map", "list"]).is_err());
        assert!(parse(&["--timeout", "soon", "map", "list"]).is_err());
        Ok(())
    }

    #[test]
    fn put_takes_pairs_or_a_method() -> Result<(), clap::Error> {
        let cli = parse(&[
            "map",
            "put",
            "bob-tv-x",
            "a",
            "-1",
            "b",
            "x y",
            "--version",
            "3",
        ])?;
        let Command::Map(MapCommand::Put(put)) = cli.command else {
            panic!("not a put: {cli:?}");
        };
        assert_eq!(put.pairs, ["a", "-1", "b", "x y"]);
        assert_eq!(put.write.version, Some(3));
        assert_eq!(put.method, None);
        let cli = parse(&[
            "map",
            "put",
            "bob-tv-x",
            "total",
            "--method",
            "a + b",
            "--args",
            "a,b",
            "--update-id",
            "u-1",
        ])?;
        let Command::Map(MapCommand::Put(put)) = cli.command else {
            panic!("not a put: {cli:?}");
        };
        assert_eq!(put.pairs, ["total"]);
        assert_eq!(put.method.as_deref(), Some("a + b"));
        assert_eq!(put.args, ["a", "b"]);
        assert_eq!(put.write.update_id.as_deref(), Some("u-1"));
        // --args only makes sense with --method; a put needs at least a key.
        assert!(parse(&["map", "put", "bob-tv-x", "k", "1", "--args", "a"]).is_err());
        assert!(parse(&["map", "put", "bob-tv-x"]).is_err());
        Ok(())
    }

    #[test]
    fn map_commands_parse() -> Result<(), clap::Error> {
        let cases: Vec<(Vec<&str>, MapCommand)> = vec![
            (
                vec!["create", "bob-tv-x", "--from", "-"],
                MapCommand::Create {
                    map: "bob-tv-x".into(),
                    from: Some("-".into()),
                },
            ),
            (
                vec!["get", "bob-tv-x", "k1", "k2", "--stale-ok"],
                MapCommand::Get {
                    map: "bob-tv-x".into(),
                    keys: vec!["k1".into(), "k2".into()],
                    stale_ok: true,
                },
            ),
            (
                vec!["rm", "bob-tv-x", "k"],
                MapCommand::Rm {
                    map: "bob-tv-x".into(),
                    keys: vec!["k".into()],
                    write: WriteArgs {
                        version: None,
                        update_id: None,
                    },
                },
            ),
            (
                vec!["apply", "cs.json"],
                MapCommand::Apply {
                    file: "cs.json".into(),
                },
            ),
            (
                vec!["list"],
                MapCommand::List {
                    prefix: None,
                    stale_ok: false,
                },
            ),
            (
                vec!["watch", "bob-", "--prefix", "--from", "4"],
                MapCommand::Watch {
                    map: "bob-".into(),
                    prefix: true,
                    from: Some(4),
                },
            ),
            (
                vec!["history", "bob-tv-x", "--after", "2"],
                MapCommand::History {
                    map: "bob-tv-x".into(),
                    after: 2,
                },
            ),
            (
                vec!["call", "bob-tv-x", "total", "2", "-3", "{\"a\":1}"],
                MapCommand::Call {
                    map: "bob-tv-x".into(),
                    method: "total".into(),
                    args: vec!["2".into(), "-3".into(), "{\"a\":1}".into()],
                },
            ),
        ];
        for (args, expected) in cases {
            let cli = parse(&[&["map"], args.as_slice()].concat())?;
            assert_eq!(cli.command, Command::Map(expected));
        }
        assert!(parse(&["map", "rm", "bob-tv-x"]).is_err(), "rm needs keys");
        Ok(())
    }

    #[test]
    fn cluster_commands_parse() -> Result<(), clap::Error> {
        let cases = [
            (
                vec!["status", "--all"],
                ClusterCommand::Status { all: true },
            ),
            (
                vec!["add", "4", "10.0.0.4:7401"],
                ClusterCommand::Add {
                    id: 4,
                    addr: "10.0.0.4:7401".into(),
                },
            ),
            (vec!["promote", "4"], ClusterCommand::Promote { id: 4 }),
            (vec!["remove", "2"], ClusterCommand::Remove { id: 2 }),
            (vec!["transfer", "3"], ClusterCommand::Transfer { id: 3 }),
        ];
        for (args, expected) in cases {
            let cli = parse(&[&["cluster"], args.as_slice()].concat())?;
            assert_eq!(cli.command, Command::Cluster(expected));
        }
        assert!(parse(&["cluster", "add", "x", "h:1"]).is_err());
        Ok(())
    }

    #[test]
    fn load_has_defaults_and_bounds() -> Result<(), clap::Error> {
        let cli = parse(&["load"])?;
        assert_eq!(
            cli.command,
            Command::Load(LoadArgs {
                writers: 16,
                seconds: Duration::from_secs(10),
                value_bytes: 256,
                maps_prefix: "load".into(),
            })
        );
        let cli = parse(&[
            "--output",
            "json",
            "load",
            "--writers",
            "256",
            "--seconds",
            "2.5",
            "--value-bytes",
            "0",
            "--maps-prefix",
            "bench",
        ])?;
        assert_eq!(cli.output, Output::Json);
        assert_eq!(
            cli.command,
            Command::Load(LoadArgs {
                writers: 256,
                seconds: Duration::from_millis(2500),
                value_bytes: 0,
                maps_prefix: "bench".into(),
            })
        );
        assert!(parse(&["load", "--writers", "0"]).is_err());
        assert!(parse(&["load", "--writers", "-3"]).is_err());
        assert!(parse(&["load", "--seconds", "0"]).is_err());
        assert!(parse(&["load", "--value-bytes", "lots"]).is_err());
        Ok(())
    }

    #[test]
    fn values_are_json_or_else_strings() {
        assert_eq!(parse_value("3"), json!(3));
        assert_eq!(parse_value("-1.5"), json!(-1.5));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value("null"), json!(null));
        assert_eq!(parse_value("\"quoted\""), json!("quoted"));
        assert_eq!(parse_value("{\"a\": [1]}"), json!({"a": [1]}));
        assert_eq!(parse_value("hello world"), json!("hello world"));
        assert_eq!(parse_value("{broken"), json!("{broken"));
        assert_eq!(parse_value(""), json!(""));
    }
}
