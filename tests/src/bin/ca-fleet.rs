//! `ca-fleet`: the book-summary services of the `demo-books` orchestration example, on one
//! loopback port (default 127.0.0.1:7700, where `ca-host dev` sends `demo-books`' events),
//! answering to a CA host's event ingress. With `--start N` it starts N orchestrations and
//! prints each one's notification as it arrives.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use spine_tests::fleet::Fleet;

/// The book-summary services (fetch, summary, two checks) of the orchestration example.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where the services listen (the CA host's sink for demo-books).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: String,
    /// The CA host's HTTP port, where answers go.
    #[arg(long, default_value = "http://127.0.0.1:7602")]
    ingress: String,
    /// Start this many orchestrations (CAs book-0 ... book-N-1 of user `demo`).
    #[arg(long, default_value_t = 0)]
    start: usize,
    /// With --start: the book.
    #[arg(long, default_value = "Dune")]
    book: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fleet = Fleet::start(&args.listen, Some(args.ingress.clone()))
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!(
        "ca-fleet: services on http://{}/events, answering to {}",
        fleet.addr, args.ingress
    );
    let run = format!("{:x}", std::process::id());
    for i in 0..args.start {
        let ca = format!("demo{run}-book{i}");
        fleet.start_orchestration(&ca, &args.book).await?;
        println!("started orchestration {ca}");
    }
    let mut shown = 0;
    loop {
        let new: Vec<String> = fleet.with_log(|log| {
            log.events[shown.min(log.events.len())..]
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {} {}",
                        r.subject,
                        r.ty,
                        if r.applied {
                            "applied"
                        } else {
                            "not applied (failed on purpose, or a repeat)"
                        },
                        r.data
                    )
                })
                .collect()
        });
        shown += new.len();
        for line in new {
            println!("{line}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
