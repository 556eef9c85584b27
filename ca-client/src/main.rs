//! `ca`: call methods of Cloud Assistants on a CA host.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use ca_client::{CaClient, CallError, MethodCall};
use clap::{Parser, Subcommand, ValueEnum};

/// Talks to a CA host (`ca-host serve` or `ca-host dev`).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The host's client endpoint.
    #[arg(
        long,
        env = "CA_ENDPOINT",
        default_value = "127.0.0.1:7601",
        global = true
    )]
    endpoint: String,
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
}

fn parse_arg(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let token = ca_client::resolve_token(cli.token.clone(), cli.token_file.as_deref())
        .context("reading the token")?;
    let client = CaClient::connect(&cli.endpoint, token.as_deref()).await?;
    match cli.command {
        Command::Call {
            app,
            ca,
            method,
            args,
        } => {
            let args = args.iter().map(|a| parse_arg(a)).collect();
            let answer = client
                .multi_call(&app, &ca, vec![MethodCall::new(method, args)])
                .await;
            Ok(print(cli.output, answer))
        }
    }
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
