//! `ca`: call methods of Cloud Assistants on a CA host, listen to their sessions'
//! notifications, exactly-once instances, and (admins) inspect CAs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ca_client::{CaClient, CallError, MethodCall, Target};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;

/// Talks to a CA host (`ca-host serve` or `ca-host dev`).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The host's client endpoint (any host of the deployment reaches any CA).
    #[arg(
        long,
        env = "CA_ENDPOINT",
        default_value = "127.0.0.1:7601",
        global = true
    )]
    endpoint: String,
    /// The logical session (`default` if none).
    #[arg(long, env = "CA_SESSION", global = true)]
    session: Option<String>,
    /// The CA to speak as (the token must admit it); by default the called CA if the token
    /// admits it, else the CA the token names.
    #[arg(long, global = true)]
    from: Option<String>,
    /// The token to present (else --token-file, else `spine-data/admin.token` if present).
    #[arg(long, env = "CA_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token.
    #[arg(long, env = "CA_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// How results are printed.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    /// The result's JSON.
    Text,
    /// `{"result": ..., "version": N}`, or `{"error": {"code": ..., "message": ...}}`.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Calls METHOD of CA (`owner-local`) of APP (`publisher-app`) with ARGS, each a JSON value
    /// (text that is not JSON is taken as a string). Prints the result once the call's
    /// checkpoint is committed.
    Call {
        /// The app, e.g. `demo-counter`.
        app: String,
        /// The CA, e.g. `alice-phone`.
        ca: String,
        /// The method.
        method: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// Prints the notifications of a session of CA (its queue first, then each one as its
    /// turn commits) and acknowledges each, until --count were printed or Ctrl-C.
    Listen {
        /// The app.
        app: String,
        /// The CA.
        ca: String,
        /// Stop after this many notifications.
        #[arg(long)]
        count: Option<u64>,
        /// Do not acknowledge: the notifications stay queued.
        #[arg(long)]
        no_ack: bool,
    },
    /// Exactly-once instances of a session.
    #[command(subcommand)]
    Session(SessionCommand),
    /// For admins: prints a CA's committed checkpoint (state, sessions and their queues,
    /// pending intents).
    Inspect {
        /// The app.
        app: String,
        /// The CA.
        ca: String,
    },
    /// Measures checkpointed turns: each of --cas clients calls `increment` of its own CA of
    /// --app in a closed loop for --seconds (after --warmup), then prints turns/s and latency.
    Load {
        /// The app (one with an `increment` method).
        #[arg(long, default_value = "demo-counter")]
        app: String,
        /// CAs, each called by its own client in a loop.
        #[arg(long, default_value_t = 100)]
        cas: usize,
        /// Seconds measured.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds of calls before measuring (activations, leases).
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Connections to the host the clients share.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// The CAs' owner prefix (CA `<prefix><n>-load`).
        #[arg(long, default_value = "load")]
        prefix: String,
    },
}

#[derive(Subcommand, Debug)]
enum SessionCommand {
    /// Starts a new instance: prints `{"nonce", "memento"}` (the memento of a previous
    /// instance that did not end).
    Begin {
        /// The app.
        app: String,
        /// The CA.
        ca: String,
    },
    /// Ends instance NONCE: prints `true`, or `false` if another instance is current.
    End {
        /// The app.
        app: String,
        /// The CA.
        ca: String,
        /// The instance's nonce.
        nonce: String,
    },
}

fn parse_arg(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let token = ca_client::resolve_token(cli.token.clone(), cli.token_file.as_deref())
        .context("reading the token")?;
    let client = CaClient::connect(&cli.endpoint, token.as_deref()).await?;
    let target = |app: &str, ca: &str| Target {
        app: app.to_string(),
        ca: ca.to_string(),
        session: cli.session.clone().unwrap_or_default(),
        from: cli.from.clone().unwrap_or_default(),
    };
    match &cli.command {
        Command::Call {
            app,
            ca,
            method,
            args,
        } => {
            let args = args.iter().map(|a| parse_arg(a)).collect();
            let answer = client
                .call_as(
                    &target(app, ca),
                    vec![MethodCall::new(method.clone(), args)],
                )
                .await;
            Ok(print(cli.output, answer))
        }
        Command::Listen {
            app,
            ca,
            count,
            no_ack,
        } => {
            let target = target(app, ca);
            let mut stream = match client.listen(&target, 0).await {
                Ok(s) => s,
                Err(e) => return Ok(fail(cli.output, e)),
            };
            let mut printed = 0;
            while count.is_none_or(|c| printed < c) {
                let n = tokio::select! {
                    n = stream.next() => n,
                    _ = tokio::signal::ctrl_c() => break,
                };
                match n {
                    Some(Ok(n)) => {
                        match cli.output {
                            Output::Text => println!("{} {} {}", n.seq, n.session, n.args),
                            Output::Json => println!(
                                "{}",
                                serde_json::json!({"seq": n.seq, "session": n.session, "args": n.args})
                            ),
                        }
                        printed += 1;
                        if !no_ack && let Err(e) = client.ack(&target, n.seq).await {
                            return Ok(fail(cli.output, e));
                        }
                    }
                    Some(Err(e)) => return Ok(fail(cli.output, e)),
                    None => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Session(SessionCommand::Begin { app, ca }) => {
            let answer = client
                .begin(&target(app, ca))
                .await
                .map(|b| ca_client::Reply {
                    result: serde_json::json!({"nonce": b.nonce, "memento": b.memento}),
                    version: 0,
                });
            Ok(print_result(cli.output, answer))
        }
        Command::Session(SessionCommand::End { app, ca, nonce }) => {
            let answer = client
                .end(&target(app, ca), nonce)
                .await
                .map(|ended| ca_client::Reply {
                    result: serde_json::json!(ended),
                    version: 0,
                });
            Ok(print_result(cli.output, answer))
        }
        Command::Inspect { app, ca } => {
            let answer = client.inspect(app, ca).await.map(|v| ca_client::Reply {
                result: v,
                version: 0,
            });
            Ok(print_result(cli.output, answer))
        }
        Command::Load {
            app,
            cas,
            seconds,
            warmup,
            connections,
            prefix,
        } => {
            let (app, cas, seconds, warmup, connections, prefix) = (
                app.clone(),
                *cas,
                *seconds,
                *warmup,
                *connections,
                prefix.clone(),
            );
            let mut clients = vec![client];
            for _ in 1..connections.max(1) {
                clients.push(CaClient::connect(&cli.endpoint, token.as_deref()).await?);
            }
            let window = ca_client::load::Window::after(
                Duration::from_secs(warmup),
                Duration::from_secs(seconds.max(1)),
            );
            eprintln!(
                "load: {cas} CAs, {warmup} s warm-up, {} s measured",
                seconds.max(1)
            );
            let report = ca_client::load::run(&clients, &app, &prefix, cas.max(1), window).await?;
            if let Some(e) = &report.first_error {
                eprintln!("load: first error: {e}");
            }
            match cli.output {
                Output::Text => println!(
                    "{} turns in {:.1} s over {} CAs: {:.0} turns/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} errors",
                    report.turns,
                    window.seconds(),
                    cas,
                    report.per_second(),
                    report.quantile_ms(0.5),
                    report.quantile_ms(0.99),
                    report.max_ms(),
                    report.errors
                ),
                Output::Json => println!(
                    "{}",
                    serde_json::json!({
                        "cas": cas, "turns": report.turns, "seconds": window.seconds(),
                        "turns_per_second": report.per_second(),
                        "p50_ms": report.quantile_ms(0.5), "p99_ms": report.quantile_ms(0.99),
                        "max_ms": report.max_ms(), "errors": report.errors,
                    })
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a result that has no checkpoint version of its own (sessions, inspect): the JSON
/// alone in both outputs (pretty for people).
fn print_result(output: Output, answer: Result<ca_client::Reply, CallError>) -> ExitCode {
    match (answer, output) {
        (Ok(reply), Output::Text) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&reply.result).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        (Ok(reply), Output::Json) => {
            println!("{}", reply.result);
            ExitCode::SUCCESS
        }
        (Err(e), output) => fail(output, e),
    }
}

fn fail(output: Output, e: CallError) -> ExitCode {
    print(output, Err(e))
}

fn print(output: Output, answer: Result<ca_client::Reply, CallError>) -> ExitCode {
    match (answer, output) {
        (Ok(reply), Output::Text) => {
            println!("{}", reply.result);
            ExitCode::SUCCESS
        }
        (Ok(reply), Output::Json) => {
            println!(
                "{}",
                serde_json::json!({"result": reply.result, "version": reply.version})
            );
            ExitCode::SUCCESS
        }
        (Err(e), Output::Text) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        (Err(e), Output::Json) => {
            let code = e.code().map(|c| c.as_str()).unwrap_or("transport");
            println!(
                "{}",
                serde_json::json!({"error": {"code": code, "message": e.to_string()}})
            );
            ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
