//! `components`: inspect what a host will be built from.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use components::Loader;

/// Inspect component descriptions (DESIGN.md §10).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the fully merged and resolved description FILE.json, or say what is wrong with it.
    ///
    /// Applies, in order: the template delta FILE++.json (from the first --dir that has it, else
    /// beside FILE.json), the spec (--spec), environment properties ("process.env.NAME||default",
    /// read from this process's environment) and links ("$._.env.KEY", to the top's env).
    Check {
        /// The base description.
        #[arg(value_name = "FILE.json")]
        file: PathBuf,
        /// A directory to look for the delta FILE++.json in; repeatable, the first that has it wins.
        #[arg(long = "dir", value_name = "DIR")]
        dirs: Vec<PathBuf>,
        /// A delta merged over the templated description; unlike a template, it may rename the top.
        #[arg(long, value_name = "SPEC.json")]
        spec: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { file, dirs, spec } => {
            let mut loader = Loader::new(&file);
            for dir in dirs {
                loader = loader.dir(dir);
            }
            if let Some(spec) = spec {
                loader = loader.spec_file(spec);
            }
            let description = loader
                .load()
                .with_context(|| format!("cannot build a host from {}", file.display()))?;
            let text = serde_json::to_string_pretty(&description)?;
            println!("{text}");
            Ok(())
        }
    }
}
