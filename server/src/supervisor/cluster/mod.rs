//! Several nodes as one service (`--cluster nats://HOST:PORT`), on NATS.
//!
//! The broker client (async-nats, tokio) runs on a thread of its own in the supervisor; workers
//! and their packet paths never see it. What goes through the broker, and why:
//!
//! - **Broadcasts** (`broadcasts.rs`) are published once into a JetStream stream (file storage):
//!   the stream numbers them for every node (`seq = base + stream sequence`, `base` from the
//!   stream's creation time, so `?since=SEQ` means the same on every node and numbers never go
//!   back). Each node reads the stream from after the last broadcast it delivered and fans each
//!   message out to its own workers: one broker message per node, never per connection.
//! - **Pushes** (`pushes.rs`) to a device another node may hold are asked of every live node
//!   (core NATS, one question, an answer per node); the node holding it queues it and says so.
//!   No per-device state anywhere in the cluster: a subscription per device would cost the
//!   broker and this client far more per connection than the connection itself (README, with
//!   the numbers), and a directory in JetStream KV would need a write per connect and a refresh
//!   per device per TTL. The cost is one message per live node per push.
//! - **Claims** (`membership.rs`): a device that registers here is announced (batched every few
//!   ms); a node that holds an older connection of it closes that one (4002), the newest
//!   registration wins (Unix time of the registration; a node that holds a newer one announces
//!   it again). **Heartbeats** every second say which nodes are alive: a push waits for their
//!   answers only.
//!
//! Faults: the broker unreachable at start → the node does not start (it could not number
//! broadcasts like the others); later outages → async-nats reconnects and resubscribes by itself,
//! and the stream is read again from after the last broadcast delivered; meanwhile a broadcast is
//! answered 503 "not published" and a push says the other nodes could not be asked. Nothing in
//! the command loop waits on the broker for long (publishes have timeouts, claims made during an
//! outage are dropped and counted): stopping never hangs on a broker that is away.

mod broadcasts;
mod membership;
mod peers;
mod pushes;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::admin_http::{Answer, Responder};
use super::Event;
pub use peers::PeerReport;
use peers::Peers;
use wire::Subjects;

pub use wire::valid_cluster_name;

/// `--cluster` settings.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `nats://HOST:PORT` (user:password@ allowed).
    pub url: String,
    /// This node's name in logs, `/stats` and the answers of pushes.
    pub node: String,
    /// Subject prefix and stream name (several clusters can share a broker).
    pub name: String,
    /// How long the node tries to reach the broker at start before it gives up.
    pub connect_timeout: Duration,
}

/// How long one publication may wait for the broker (the client's queue, or its confirmation).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// Claims are sent together, at most this late...
const CLAIM_BATCH_EVERY: Duration = Duration::from_millis(5);
/// ... or as soon as this many wait.
const CLAIM_BATCH_MAX: usize = 512;

/// What the supervisor asks of the cluster thread.
enum Command {
    Broadcast {
        text: Option<String>,
        request: Option<Responder>,
    },
    Push {
        id: String,
        text: Option<String>,
        ts_ns: u64,
        local: oneshot::Receiver<Answer>,
        request: Responder,
    },
    Claim {
        id: String,
        at_unix_ns: u64,
    },
}

/// What the cluster thread hands the supervisor (as `Event::Cluster`).
pub enum ClusterEvent {
    /// A broadcast from the stream, numbered; `request` is the admin's, if it was posted here.
    Broadcast {
        seq: u64,
        ts_ns: u64,
        text: Option<String>,
        request: Option<Responder>,
    },
    /// Another node asks: push this to device `id` if a worker here holds it.
    PushAsk {
        id: String,
        text: Option<String>,
        ts_ns: u64,
        reply: Responder,
    },
    /// Devices registered on another node at these Unix times.
    Claims { node: String, claims: Vec<(String, u64)> },
}

/// The cluster's figures for `/stats` and `/metrics`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterReport {
    pub node: String,
    pub broker: String,
    /// `connected` or `disconnected`.
    pub state: String,
    pub peers: Vec<PeerReport>,
    /// Broadcasts this node published (admin and periodic); refused (503: the broker was away or
    /// said no); not confirmed in time (504: they may still have gone out).
    pub broadcasts_published: u64,
    pub broadcasts_not_published: u64,
    pub broadcasts_unconfirmed: u64,
    /// Broadcasts this node read from the stream (everyone's).
    pub broadcasts_received: u64,
    /// The newest broadcast's sequence number here.
    pub last_seq: u64,
    /// Broadcasts in the stream not yet delivered to this node, and how long the last one took
    /// from its publication to this node.
    pub lag_messages: u64,
    pub lag_ms: u64,
    /// Pushes asked of the other nodes, and how many of them a node queued.
    pub pushes_asked: u64,
    pub pushes_queued_elsewhere: u64,
    /// Pushes posted here that reached no device on any node.
    pub pushes_missed: u64,
    /// Live nodes that did not answer a push in time (summed over pushes).
    pub push_answers_missing: u64,
    /// Pushes that could not ask the other nodes (broker unreachable).
    pub pushes_not_asked: u64,
    /// Questions of other nodes answered here.
    pub pushes_answered: u64,
    pub claims_sent: u64,
    /// Claims not sent: made while the broker was away (those devices stay where they are until
    /// they reconnect).
    pub claims_dropped: u64,
    pub claims_received: u64,
    /// Connections closed here (4002) because the device connected to another node later.
    pub devices_moved_away: u64,
    /// Messages from the broker that did not decode or were out of bounds (dropped).
    pub bad_messages: u64,
    /// Stream messages delivered again after a reset of the consumer (skipped, not fanned out).
    pub replays_skipped: u64,
    pub disconnects: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    broadcasts_published: AtomicU64,
    broadcasts_not_published: AtomicU64,
    broadcasts_unconfirmed: AtomicU64,
    broadcasts_received: AtomicU64,
    last_seq: AtomicU64,
    lag_messages: AtomicU64,
    lag_ms: AtomicU64,
    pushes_asked: AtomicU64,
    pushes_queued_elsewhere: AtomicU64,
    pushes_missed: AtomicU64,
    push_answers_missing: AtomicU64,
    pushes_not_asked: AtomicU64,
    pushes_answered: AtomicU64,
    claims_sent: AtomicU64,
    claims_dropped: AtomicU64,
    claims_received: AtomicU64,
    devices_moved_away: AtomicU64,
    bad_messages: AtomicU64,
    replays_skipped: AtomicU64,
    disconnects: AtomicU64,
    /// Devices held by this node (the supervisor's directory), for the heartbeats.
    devices: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// State shared by the cluster thread's tasks.
struct Shared {
    opts: ClusterOptions,
    subjects: Subjects,
    /// This process (a node's name may be reused by its next run).
    instance: u64,
    counters: Counters,
    peers: Mutex<Peers>,
    /// Admin answers of broadcasts posted here, by request id (`wire::HEADER_REQUEST`), until
    /// their message comes back from the stream.
    waiting: Mutex<HashMap<String, (Instant, Responder)>>,
    next_request: AtomicU64,
    /// Pushes asked of the other nodes, by ask number: where their answers go.
    asks: Mutex<HashMap<u64, tmpsc::UnboundedSender<wire::PushReply>>>,
    events: mpsc::Sender<Event>,
}

impl Shared {
    fn connected(&self) -> bool {
        self.counters.connected.load(Ordering::Relaxed)
    }
}

/// The running cluster client.
pub struct Cluster {
    commands: tmpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

/// Where this node's broadcasts start: every broadcast of the cluster from now on is numbered
/// after it.
pub struct Started {
    pub cluster: Cluster,
    pub first_seq: u64,
}

impl Cluster {
    /// Connect to the broker (for at most `connect_timeout`), make sure the stream exists, and
    /// start reading it after its newest broadcast.
    pub(super) fn start(opts: ClusterOptions, events: mpsc::Sender<Event>) -> anyhow::Result<Started> {
        let subjects = Subjects::new(&opts.name);
        let shared = Arc::new(Shared {
            subjects,
            instance: fastrand::u64(1..),
            counters: Counters::default(),
            peers: Mutex::new(Peers::default()),
            waiting: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(0),
            asks: Mutex::new(HashMap::new()),
            events,
            opts,
        });
        let (commands, rx) = tmpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("starting the cluster's runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(run(thread_shared, rx, stopped, ready_tx));
                // Tasks still waiting on the broker are dropped, not waited for.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .context("starting the cluster thread")?;
        let first_seq = match ready_rx.recv() {
            Ok(Ok(first_seq)) => first_seq,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => bail!("the cluster thread ended before it connected"),
        };
        Ok(Started {
            cluster: Cluster {
                commands,
                shared,
                thread: Some(thread),
                stop: Some(stop),
            },
            first_seq,
        })
    }

    pub fn node(&self) -> &str {
        &self.shared.opts.node
    }

    /// Whether the broker connection is up.
    pub fn connected(&self) -> bool {
        self.shared.connected()
    }

    /// Publish a broadcast (`text` None: the periodic push); `request` is answered once it comes
    /// back from the stream and is fanned out here, or at once if it could not be published.
    pub(super) fn broadcast(&self, text: Option<String>, request: Option<Responder>) {
        let _ = self.commands.send(Command::Broadcast { text, request });
    }

    /// Push to device `id` wherever it is: `local` is this node's own answer, the other nodes
    /// are asked (they format the push themselves); `request` gets the combined answer.
    pub(super) fn push(
        &self,
        id: String,
        text: Option<String>,
        ts_ns: u64,
        local: oneshot::Receiver<Answer>,
        request: Responder,
    ) {
        let _ = self.commands.send(Command::Push {
            id,
            text,
            ts_ns,
            local,
            request,
        });
    }

    /// Device `id` registered here at `at_unix_ns`: tell the other nodes.
    pub(super) fn claim(&self, id: String, at_unix_ns: u64) {
        let _ = self.commands.send(Command::Claim { id, at_unix_ns });
    }

    /// A connection here was closed because its device connected to another node later.
    pub(super) fn moved_away(&self) {
        add(&self.shared.counters.devices_moved_away, 1);
    }

    /// The devices this node holds, for its heartbeats.
    pub(super) fn set_devices(&self, devices: u64) {
        self.shared.counters.devices.store(devices, Ordering::Relaxed);
    }

    /// Pushes posted here that reached no device anywhere.
    pub(super) fn pushes_missed(&self) -> u64 {
        self.shared.counters.pushes_missed.load(Ordering::Relaxed)
    }

    pub fn report(&self) -> ClusterReport {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let peers = self
            .shared
            .peers
            .lock()
            .map(|p| p.report(Instant::now()))
            .unwrap_or_default();
        ClusterReport {
            node: self.shared.opts.node.clone(),
            broker: redact_url(&self.shared.opts.url),
            state: if self.shared.connected() {
                "connected"
            } else {
                "disconnected"
            }
            .into(),
            peers,
            broadcasts_published: get(&c.broadcasts_published),
            broadcasts_not_published: get(&c.broadcasts_not_published),
            broadcasts_unconfirmed: get(&c.broadcasts_unconfirmed),
            broadcasts_received: get(&c.broadcasts_received),
            last_seq: get(&c.last_seq),
            lag_messages: get(&c.lag_messages),
            lag_ms: get(&c.lag_ms),
            pushes_asked: get(&c.pushes_asked),
            pushes_queued_elsewhere: get(&c.pushes_queued_elsewhere),
            pushes_missed: get(&c.pushes_missed),
            push_answers_missing: get(&c.push_answers_missing),
            pushes_not_asked: get(&c.pushes_not_asked),
            pushes_answered: get(&c.pushes_answered),
            claims_sent: get(&c.claims_sent),
            claims_dropped: get(&c.claims_dropped),
            claims_received: get(&c.claims_received),
            devices_moved_away: get(&c.devices_moved_away),
            bad_messages: get(&c.bad_messages),
            replays_skipped: get(&c.replays_skipped),
            disconnects: get(&c.disconnects),
        }
    }

    /// Say goodbye to the other nodes, send the claims still batched, and leave the broker
    /// (within about a second, whatever the broker does).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The broker's address without its password, for logs and `/stats`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Try to reach the broker until `connect_timeout` has passed (async-nats then keeps the
/// connection up by itself, reconnecting for as long as the node runs).
async fn connect(shared: &Arc<Shared>) -> anyhow::Result<async_nats::Client> {
    let opts = &shared.opts;
    let deadline = tokio::time::Instant::now() + opts.connect_timeout;
    let mut last_error = String::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            bail!(
                "cannot reach the cluster broker at {} within {:?} (--cluster-connect-timeout): {last_error}. A node does not start without it: it could not number broadcasts like the other nodes. Start nats-server (with -js), or run without --cluster",
                redact_url(&opts.url),
                opts.connect_timeout
            );
        }
        let events = Arc::clone(shared);
        let attempt = async_nats::ConnectOptions::new()
            .name(format!("ws-server {}", opts.node))
            .connection_timeout(left.min(Duration::from_secs(2)))
            .max_reconnects(None)
            .event_callback(move |event| {
                let shared = Arc::clone(&events);
                async move { broker_event(&shared, event) }
            })
            .connect(opts.url.as_str())
            .await;
        match attempt {
            Ok(client) => {
                shared.counters.connected.store(true, Ordering::Relaxed);
                return Ok(client);
            }
            Err(e) => {
                last_error = e.to_string();
                log::info!("cluster: broker at {} not reachable yet: {e}", redact_url(&opts.url));
                tokio::time::sleep(Duration::from_millis(250).min(left)).await;
            }
        }
    }
}

fn broker_event(shared: &Shared, event: async_nats::Event) {
    let url = redact_url(&shared.opts.url);
    match event {
        async_nats::Event::Connected => {
            shared.counters.connected.store(true, Ordering::Relaxed);
            if shared.counters.disconnects.load(Ordering::Relaxed) > 0 {
                log::warn!("cluster: connected to the broker at {url} again");
                // Nobody could be heard while we were away: give every node a TTL to be heard.
                if let Ok(mut peers) = shared.peers.lock() {
                    peers.forgive(Instant::now());
                }
            }
        }
        async_nats::Event::Disconnected => {
            shared.counters.connected.store(false, Ordering::Relaxed);
            add(&shared.counters.disconnects, 1);
            log::error!(
                "cluster: lost the broker at {url}; reconnecting. Until then broadcasts are refused (503) and pushes reach this node's devices only"
            );
        }
        async_nats::Event::SlowConsumer(sid) => log::warn!("cluster: slow consumer on subscription {sid}"),
        // Every failed reconnect attempt says so: the disconnect was logged once already.
        async_nats::Event::ClientError(e) => log::debug!("cluster: broker client: {e}"),
        other => log::info!("cluster: broker event: {other}"),
    }
}

/// Publish `payload` on `subject`, giving up after `PUBLISH_TIMEOUT` (the client's queue is full
/// while the broker is away). Whether it went out.
async fn publish(client: &async_nats::Client, subject: String, payload: bytes::Bytes) -> bool {
    matches!(
        tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(subject, payload)).await,
        Ok(Ok(()))
    )
}

/// The cluster thread: connect, report where numbering starts, then serve until stopped.
async fn run(
    shared: Arc<Shared>,
    mut commands: tmpsc::UnboundedReceiver<Command>,
    stopped: oneshot::Receiver<()>,
    ready: mpsc::SyncSender<anyhow::Result<u64>>,
) {
    let setup = async {
        let client = connect(&shared).await?;
        let js = jetstream::new(client.clone());
        let (base, last) = broadcasts::open_stream(&js, &shared.subjects).await?;
        let subscribe = |subject: String| client.subscribe(subject);
        let subscriptions = (
            subscribe(shared.subjects.push.clone()).await?,
            subscribe(shared.subjects.claim.clone()).await?,
            subscribe(shared.subjects.node.clone()).await?,
            subscribe(format!("{}.*", shared.subjects.replies(shared.instance))).await?,
        );
        anyhow::Ok((client, js, base, last, subscriptions))
    };
    let (client, js, base, last, (asks, claims, beats, replies)) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let first_seq = base.saturating_add(last);
    shared.counters.last_seq.store(first_seq, Ordering::Relaxed);
    log::info!(
        "cluster: node {} connected to {}; broadcasts from stream {} (next number {})",
        shared.opts.node,
        redact_url(&shared.opts.url),
        shared.subjects.stream,
        first_seq.saturating_add(1)
    );
    let _ = ready.send(Ok(first_seq));

    let tasks = [
        tokio::spawn(broadcasts::read(Arc::clone(&shared), js.clone(), base, last)),
        tokio::spawn(pushes::answer_asks(Arc::clone(&shared), client.clone(), asks)),
        tokio::spawn(pushes::read_replies(Arc::clone(&shared), replies)),
        tokio::spawn(membership::read_claims(Arc::clone(&shared), claims)),
        tokio::spawn(membership::read_heartbeats(Arc::clone(&shared), beats)),
        tokio::spawn(membership::send_heartbeats(Arc::clone(&shared), client.clone())),
    ];

    let mut batch: Vec<(String, u64)> = Vec::new();
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut stopped = stopped;
    let mut next_ask = 0u64;
    loop {
        let wait = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stopped => break,
            command = commands.recv() => match command {
                None => break,
                Some(Command::Claim { id, at_unix_ns }) => {
                    batch.push((id, at_unix_ns));
                    if batch.len() >= CLAIM_BATCH_MAX {
                        tokio::spawn(membership::send_claims(Arc::clone(&shared), client.clone(), std::mem::take(&mut batch)));
                        flush_at = None;
                    } else if flush_at.is_none() {
                        flush_at = Some(tokio::time::Instant::now() + CLAIM_BATCH_EVERY);
                    }
                }
                Some(Command::Broadcast { text, request }) => {
                    tokio::spawn(broadcasts::publish(Arc::clone(&shared), js.clone(), text, request));
                }
                Some(Command::Push { id, text, ts_ns, local, request }) => {
                    next_ask += 1;
                    let question = pushes::Question { ask: next_ask, id, text, ts_ns };
                    tokio::spawn(pushes::ask_everyone(Arc::clone(&shared), client.clone(), question, local, request));
                }
            },
            _ = wait => {
                tokio::spawn(membership::send_claims(Arc::clone(&shared), client.clone(), std::mem::take(&mut batch)));
                flush_at = None;
            }
        }
    }
    for task in tasks {
        task.abort();
    }
    let leaving = async {
        membership::send_claims(Arc::clone(&shared), client.clone(), batch).await;
        membership::say_goodbye(&shared, &client).await;
        let _ = client.flush().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), leaving).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(redact_url("nats://a:secret@10.0.0.1:4222"), "nats://…@10.0.0.1:4222");
        assert_eq!(redact_url("nats://10.0.0.1:4222"), "nats://10.0.0.1:4222");
    }
}
