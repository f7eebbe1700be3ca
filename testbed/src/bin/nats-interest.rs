//! `nats-interest`: what one NATS subscription per device would cost, in the broker and in our
//! client (async-nats), measured by subscribing to K subjects. The numbers behind the cluster's
//! choice (README, "A cluster of nodes"): pushes are asked of every node instead. See --help.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// Subscribe to --subjects distinct subjects on one connection and report the resident bytes
/// each one costs this client (async-nats, as ws-server uses it) and, with --broker-pid, the
/// broker; then unsubscribe. Run it against a broker of your own (nats-server -a 127.0.0.1).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The broker.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Subscriptions to make (one subject each, as a subscription per device would).
    #[arg(long, default_value_t = 100_000)]
    subjects: u64,
    /// The broker's pid, to read its resident memory before and after.
    #[arg(long)]
    broker_pid: Option<u32>,
}

fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(1..=10_000_000).contains(&args.subjects) {
        bail!("--subjects must be 1 to 10,000,000");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = async_nats::connect(args.url.as_str())
            .await
            .with_context(|| format!("connecting to {}", args.url))?;
        client.flush().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (own_before, broker_before) = (host::process::own_rss_bytes(), args.broker_pid.map(rss_of).transpose()?);
        let started = Instant::now();
        let mut subs = Vec::with_capacity(args.subjects as usize);
        for i in 0..args.subjects {
            subs.push(client.subscribe(format!("interest.dev.{i:012}")).await?);
            if i % 10_000 == 9_999 {
                client.flush().await?;
            }
        }
        client.flush().await?;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (own_after, broker_after) = (host::process::own_rss_bytes(), args.broker_pid.map(rss_of).transpose()?);
        let n = args.subjects as f64;
        println!(
            "{} subscriptions in {:.2} s ({:.0}/s)",
            args.subjects,
            took.as_secs_f64(),
            n / took.as_secs_f64().max(1e-9)
        );
        println!(
            "client (async-nats): {:.0} resident bytes per subscription",
            own_after.saturating_sub(own_before) as f64 / n
        );
        if let (Some(before), Some(after)) = (broker_before, broker_after) {
            println!(
                "broker: {:.0} resident bytes per subscription",
                after.saturating_sub(before) as f64 / n
            );
        }
        drop(subs);
        client.flush().await?;
        anyhow::Ok(())
    })
}
