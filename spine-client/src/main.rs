//! `spinectl`: read, write and watch Sharing Maps and manage a Spine cluster from the shell.
//!
//! Every failure prints exactly one line, `error: <reason>`, on stderr and exits with status 1.

use std::process::ExitCode;

use clap::Parser;
use spine_client::ClientError;

mod spinectl;

use spinectl::args::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(spinectl::run::run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, with a hint when no node answered.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = format!("{error:#}").replace('\n', " ");
    if matches!(
        error.downcast_ref::<ClientError>(),
        Some(ClientError::Unavailable { .. })
    ) {
        if text.contains("frame with invalid size") || text.contains("InvalidContentType") {
            text.push_str(" (does the cluster serve TLS? pass --tls-ca or set SPINE_TLS_CA)");
        } else {
            text.push_str(" (is `spine dev` running?)");
        }
    }
    text
}
