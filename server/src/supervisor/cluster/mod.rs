//! Several nodes as one service (`--cluster nats://HOST:PORT`), on NATS.
//!
//! The broker client (async-nats, tokio) runs on a thread of its own in the supervisor; workers
//! and their packet paths never see it. What goes through the broker, and why:
//!
//! - **Broadcasts** are published once into a JetStream stream (file storage): the stream's
//!   sequence numbers them for every node (`seq = base + stream sequence`, `base` from the
//!   stream's creation time, so `?since=SEQ` means the same on every node and numbers never go
//!   back). Each node reads the stream with an ordered consumer and fans each message out to its
//!   own workers: one broker message per node, never per connection.
//! - **Pushes** to a device another node may hold are asked of every live node (core NATS,
//!   request with many replies); the node holding it queues it and says so, the others say no.
//!   No per-device state anywhere in the cluster: a subscription per device would cost the
//!   broker and this client far more per connection than the connection itself (see the README's
//!   cluster section for the numbers), and a directory in JetStream KV would need a write per
//!   connect and a refresh per device per TTL. The cost is one message per live node per push.
//! - **Claims**: a device that registers here is announced (batched every few ms); a node that
//!   holds an older connection of it closes that one (4002), the newest registration wins
//!   (Unix time of the registration; a node that holds a newer one announces it again).
//! - **Heartbeats** every second say which nodes are alive: a push waits for their answers only.
//!
//! Faults: the broker unreachable at start → the node does not start (it could not number
//! broadcasts like the others); later outages → async-nats reconnects and resubscribes by itself,
//! the ordered consumer resumes after the last broadcast it delivered; meanwhile a broadcast is
//! answered 503 "not published" and a push says which nodes could not be asked.

mod peers;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::admin_http::{Answer, Responder};
use super::Event;
use crate::core::message;
pub use peers::PeerReport;
use peers::{Heard, Peers};
use wire::{Subjects, HEADER_KIND, HEADER_NODE, HEADER_TS};

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

/// How often a node says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a push waits for the other nodes' answers.
const PUSH_ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a broadcast waits for the broker to store it.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// Claims are sent together, at most this late...
const CLAIM_BATCH_EVERY: Duration = Duration::from_millis(5);
/// ... or as soon as this many wait.
const CLAIM_BATCH_MAX: usize = 512;
/// Broadcasts the stream keeps (for nodes that were away; older ones are not needed: a node's
/// `since` recovery is bounded by its own message log).
const STREAM_MAX_MSGS: i64 = 100_000;
const STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Broadcast answers waiting for their message to come back from the stream, at most.
const MAX_WAITING_ANSWERS: usize = 10_000;

/// What the supervisor asks of the cluster thread.
enum Command {
    Broadcast {
        text: Option<String>,
        request: Option<Responder>,
    },
    Push {
        id: String,
        payload: String,
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
    /// Another node asks: push `payload` to device `id` if a worker here holds it.
    PushAsk {
        id: String,
        payload: String,
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
    /// Broadcasts this node published (admin and periodic), and those refused for an outage.
    pub broadcasts_published: u64,
    pub broadcasts_not_published: u64,
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
    /// Live nodes that did not answer a push in time (summed over pushes).
    pub push_answers_missing: u64,
    /// Pushes that could not ask anyone (broker unreachable).
    pub pushes_not_asked: u64,
    /// Questions of other nodes answered here.
    pub pushes_answered: u64,
    pub claims_sent: u64,
    pub claims_received: u64,
    /// Connections closed here (4002) because the device connected to another node later.
    pub devices_moved_away: u64,
    /// Messages from the broker that did not decode (dropped).
    pub bad_messages: u64,
    pub disconnects: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    broadcasts_published: AtomicU64,
    broadcasts_not_published: AtomicU64,
    broadcasts_received: AtomicU64,
    last_seq: AtomicU64,
    lag_messages: AtomicU64,
    lag_ms: AtomicU64,
    pushes_asked: AtomicU64,
    pushes_queued_elsewhere: AtomicU64,
    push_answers_missing: AtomicU64,
    pushes_not_asked: AtomicU64,
    pushes_answered: AtomicU64,
    claims_sent: AtomicU64,
    claims_received: AtomicU64,
    devices_moved_away: AtomicU64,
    bad_messages: AtomicU64,
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
    /// Admin answers of broadcasts posted here, by stream sequence, until the message comes back
    /// from the stream (`delivered`: the last stream sequence handed to the supervisor).
    waiting: Mutex<(HashMap<u64, Responder>, u64)>,
    /// Pushes asked of the other nodes, by ask number: where their answers go.
    asks: Mutex<HashMap<u64, tmpsc::UnboundedSender<wire::PushReply>>>,
    events: mpsc::Sender<Event>,
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
            waiting: Mutex::new((HashMap::new(), 0)),
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

    /// Publish a broadcast (`text` None: the periodic push); `request` is answered once it comes
    /// back from the stream and is fanned out here, or at once if it could not be published.
    pub(super) fn broadcast(&self, text: Option<String>, request: Option<Responder>) {
        let _ = self.commands.send(Command::Broadcast { text, request });
    }

    /// Push `payload` to device `id` wherever it is: `local` is this node's own answer, the other
    /// nodes are asked; `request` gets the combined answer.
    pub(super) fn push(&self, id: String, payload: String, local: oneshot::Receiver<Answer>, request: Responder) {
        let _ = self.commands.send(Command::Push {
            id,
            payload,
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

    pub fn connected(&self) -> bool {
        self.shared.counters.connected.load(Ordering::Relaxed)
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
            state: if self.connected() { "connected" } else { "disconnected" }.into(),
            peers,
            broadcasts_published: get(&c.broadcasts_published),
            broadcasts_not_published: get(&c.broadcasts_not_published),
            broadcasts_received: get(&c.broadcasts_received),
            last_seq: get(&c.last_seq),
            lag_messages: get(&c.lag_messages),
            lag_ms: get(&c.lag_ms),
            pushes_asked: get(&c.pushes_asked),
            pushes_queued_elsewhere: get(&c.pushes_queued_elsewhere),
            push_answers_missing: get(&c.push_answers_missing),
            pushes_not_asked: get(&c.pushes_not_asked),
            pushes_answered: get(&c.pushes_answered),
            claims_sent: get(&c.claims_sent),
            claims_received: get(&c.claims_received),
            devices_moved_away: get(&c.devices_moved_away),
            bad_messages: get(&c.bad_messages),
            disconnects: get(&c.disconnects),
        }
    }

    /// Send the claims still batched and leave the broker.
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

/// Unix ns from a JetStream time.
fn unix_ns_of(t: &async_nats::datetime::DateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0)
}

/// The number every node gives stream message 0: the stream's creation time in ms × 1000 (as
/// `message::first_seq` does for one server's run), so that numbers stay above those of an
/// earlier stream of the same name.
fn seq_base(created: &async_nats::datetime::DateTime) -> u64 {
    unix_ns_of(created) / 1_000_000 * 1000
}

async fn connect(shared: &Arc<Shared>) -> anyhow::Result<async_nats::Client> {
    let events = Arc::clone(shared);
    let opts = &shared.opts;
    let connecting = async_nats::ConnectOptions::new()
        .name(format!("ws-server {}", opts.node))
        .connection_timeout(opts.connect_timeout.min(Duration::from_secs(5)))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let shared = Arc::clone(&events);
            async move { broker_event(&shared, event) }
        })
        .connect(opts.url.as_str());
    match tokio::time::timeout(opts.connect_timeout, connecting).await {
        Ok(Ok(client)) => {
            shared.counters.connected.store(true, Ordering::Relaxed);
            Ok(client)
        }
        Ok(Err(e)) => bail!("cannot reach the cluster broker at {}: {e}", redact_url(&opts.url)),
        Err(_) => bail!(
            "cannot reach the cluster broker at {} within {:?} (--cluster-connect-timeout); a node does not start without it: it could not number broadcasts like the other nodes. Start nats-server (with -js), or run without --cluster",
            redact_url(&opts.url),
            opts.connect_timeout
        ),
    }
}

fn broker_event(shared: &Shared, event: async_nats::Event) {
    let url = redact_url(&shared.opts.url);
    match event {
        async_nats::Event::Connected => {
            shared.counters.connected.store(true, Ordering::Relaxed);
            if shared.counters.disconnects.load(Ordering::Relaxed) > 0 {
                log::warn!("cluster: connected to the broker at {url} again");
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

/// The stream of broadcasts, made if it does not exist (every node asks for the same one).
async fn stream(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<jetstream::stream::Stream> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: subjects.stream.clone(),
        subjects: vec![subjects.broadcast.clone()],
        storage: jetstream::stream::StorageType::File,
        max_messages: STREAM_MAX_MSGS,
        max_age: STREAM_MAX_AGE,
        ..Default::default()
    })
    .await
    .with_context(|| {
        format!(
            "making the JetStream stream {} (is JetStream on? nats-server -js)",
            subjects.stream
        )
    })
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
        let mut stream = stream(&js, &shared.subjects).await?;
        let info = stream.info().await.context("reading the broadcast stream's state")?;
        let base = seq_base(&info.created);
        let last = info.state.last_sequence;
        anyhow::Ok((client, js, base, last))
    };
    let (client, js, base, last) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    shared.counters.last_seq.store(base + last, Ordering::Relaxed);
    log::info!(
        "cluster: node {} connected to {}; broadcasts from stream {} (next number {})",
        shared.opts.node,
        redact_url(&shared.opts.url),
        shared.subjects.stream,
        base + last + 1
    );
    let subscriptions = async {
        let asks = client.subscribe(shared.subjects.push.clone()).await?;
        let claims = client.subscribe(shared.subjects.claim.clone()).await?;
        let beats = client.subscribe(shared.subjects.node.clone()).await?;
        let replies = client
            .subscribe(format!("{}.*", shared.subjects.replies(shared.instance)))
            .await?;
        anyhow::Ok((asks, claims, beats, replies))
    };
    let (asks, claims, beats, replies) = match subscriptions.await {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e.context("subscribing to the cluster's subjects")));
            return;
        }
    };
    let _ = ready.send(Ok(base + last));

    let tasks = [
        tokio::spawn(read_broadcasts(Arc::clone(&shared), js.clone(), base, last)),
        tokio::spawn(answer_asks(Arc::clone(&shared), client.clone(), asks)),
        tokio::spawn(read_claims(Arc::clone(&shared), claims)),
        tokio::spawn(read_heartbeats(Arc::clone(&shared), beats)),
        tokio::spawn(read_replies(Arc::clone(&shared), replies)),
        tokio::spawn(send_heartbeats(Arc::clone(&shared), client.clone())),
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
                        send_claims(&shared, &client, &mut batch).await;
                        flush_at = None;
                    } else if flush_at.is_none() {
                        flush_at = Some(tokio::time::Instant::now() + CLAIM_BATCH_EVERY);
                    }
                }
                Some(Command::Broadcast { text, request }) => {
                    tokio::spawn(publish(Arc::clone(&shared), js.clone(), text, request));
                }
                Some(Command::Push { id, payload, local, request }) => {
                    next_ask += 1;
                    tokio::spawn(ask_everyone(Arc::clone(&shared), client.clone(), next_ask, id, payload, local, request));
                }
            },
            _ = wait => {
                send_claims(&shared, &client, &mut batch).await;
                flush_at = None;
            }
        }
    }
    send_claims(&shared, &client, &mut batch).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    for task in tasks {
        task.abort();
    }
}

async fn send_claims(shared: &Shared, client: &async_nats::Client, batch: &mut Vec<(String, u64)>) {
    if batch.is_empty() {
        return;
    }
    let msg = wire::Claims {
        instance: shared.instance,
        node: shared.opts.node.clone(),
        claims: std::mem::take(batch),
    };
    add(&shared.counters.claims_sent, msg.claims.len() as u64);
    // Lost in an outage: the devices then stay where they are until they reconnect (the
    // claim of their next connection goes out).
    let _ = client.publish(shared.subjects.claim.clone(), wire::encode(&msg)).await;
}

/// Publish one broadcast and answer its admin request (`request`): at once if it failed, else
/// when the message comes back from the stream (`read_broadcasts`).
async fn publish(shared: Arc<Shared>, js: jetstream::Context, text: Option<String>, request: Option<Responder>) {
    let refuse = |request: Option<Responder>, status: u16, why: String| {
        add(&shared.counters.broadcasts_not_published, 1);
        log::error!("cluster: a broadcast was not published: {why}");
        if let Some(request) = request {
            request.respond_json(status, &serde_json::json!({ "published": false, "error": why }));
        }
    };
    if !shared.counters.connected.load(Ordering::Relaxed) {
        let why = format!(
            "not published: the cluster broker at {} is unreachable (nothing was delivered; post it again later)",
            redact_url(&shared.opts.url)
        );
        return refuse(request, 503, why);
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_TS, message::unix_ns().to_string());
    headers.insert(HEADER_NODE, shared.opts.node.clone());
    headers.insert(HEADER_KIND, if text.is_some() { "admin" } else { "periodic" });
    let payload = text.unwrap_or_default();
    let acked = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        js.publish_with_headers(shared.subjects.broadcast.clone(), headers, payload.into())
            .await?
            .await
            .map_err(anyhow::Error::from)
    })
    .await;
    let ack = match acked {
        Ok(Ok(ack)) => ack,
        Ok(Err(e)) => return refuse(request, 503, format!("not published: the broker refused it: {e}")),
        Err(_) => {
            return refuse(
                request,
                504,
                format!("unknown: the broker did not confirm within {PUBLISH_TIMEOUT:?}; it may still be delivered"),
            )
        }
    };
    add(&shared.counters.broadcasts_published, 1);
    let Some(request) = request else { return };
    let Ok(mut waiting) = shared.waiting.lock() else { return };
    let (answers, delivered) = &mut *waiting;
    if ack.sequence > *delivered && answers.len() < MAX_WAITING_ANSWERS {
        answers.insert(ack.sequence, request);
    } else {
        // Back from the stream before its acknowledgement (or answers pile up): say what is known.
        request.respond_json(
            200,
            &serde_json::json!({ "published": true, "stream_sequence": ack.sequence, "node": shared.opts.node }),
        );
    }
}

/// Read the stream from after `last` on, for as long as the node runs: each broadcast goes to
/// the supervisor, numbered. The ordered consumer recreates itself after a broker restart; if it
/// gives up, a new one starts after the last broadcast delivered.
async fn read_broadcasts(shared: Arc<Shared>, js: jetstream::Context, mut base: u64, mut last: u64) {
    loop {
        match consume(&shared, &js, &mut base, &mut last).await {
            Ok(()) => log::warn!("cluster: the broadcast stream ended; reading it again"),
            Err(e) => log::warn!("cluster: reading broadcasts: {e:#}; trying again in 1 s"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn consume(shared: &Shared, js: &jetstream::Context, base: &mut u64, last: &mut u64) -> anyhow::Result<()> {
    let stream = stream(js, &shared.subjects).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: shared.subjects.broadcast.clone(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: *last + 1,
            },
            ..Default::default()
        })
        .await
        .context("creating the broadcast consumer")?;
    let mut messages = consumer.messages().await.context("reading the broadcast consumer")?;
    while let Some(msg) = messages.next().await {
        let msg = msg.context("the broadcast consumer")?;
        let Ok(info) = msg.info() else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        let (stream_seq, pending, published) = (info.stream_sequence, info.pending, unix_ns_of(&info.published));
        if stream_seq <= *last {
            // The stream was made again (deleted by an operator): number after its new base.
            let mut s = stream.clone();
            if let Ok(info) = s.info().await {
                log::error!(
                    "cluster: stream {} restarted at sequence {stream_seq} (was {last}); numbering from its new start",
                    shared.subjects.stream
                );
                *base = seq_base(&info.created);
            }
        }
        *last = stream_seq;
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let ts_ns = header(HEADER_TS).and_then(|t| t.parse().ok()).unwrap_or(published);
        let periodic = header(HEADER_KIND).as_deref() == Some("periodic");
        let text = (!periodic).then(|| String::from_utf8_lossy(&msg.payload).into_owned());
        let seq = *base + stream_seq;
        let c = &shared.counters;
        add(&c.broadcasts_received, 1);
        c.last_seq.store(seq, Ordering::Relaxed);
        c.lag_messages.store(pending, Ordering::Relaxed);
        c.lag_ms
            .store(message::unix_ns().saturating_sub(ts_ns) / 1_000_000, Ordering::Relaxed);
        let request = shared.waiting.lock().ok().and_then(|mut w| {
            w.1 = stream_seq;
            let answer = w.0.remove(&stream_seq);
            w.0.retain(|&s, _| s > stream_seq);
            answer
        });
        let _ = shared.events.send(Event::Cluster(ClusterEvent::Broadcast {
            seq,
            ts_ns,
            text,
            request,
        }));
    }
    Ok(())
}

/// Another node's push question: asked of the supervisor, answered to the asker.
async fn answer_asks(shared: Arc<Shared>, client: async_nats::Client, mut asks: async_nats::Subscriber) {
    while let Some(msg) = asks.next().await {
        let Some(ask) = wire::decode::<wire::PushAsk>(&msg.payload) else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        let Some(reply_to) = msg.reply.clone() else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        if ask.instance == shared.instance {
            continue; // our own question: this node answers it locally
        }
        let (reply, answer) = Responder::pair();
        let _ = shared.events.send(Event::Cluster(ClusterEvent::PushAsk {
            id: ask.id,
            payload: ask.payload,
            reply,
        }));
        let shared = Arc::clone(&shared);
        let client = client.clone();
        tokio::spawn(async move {
            let queued = match answer.await {
                Ok(a) => queued_in(&a.body),
                Err(_) => false,
            };
            add(&shared.counters.pushes_answered, 1);
            let reply = wire::PushReply {
                instance: shared.instance,
                node: shared.opts.node.clone(),
                queued,
            };
            let _ = client.publish(reply_to, wire::encode(&reply)).await;
        });
    }
}

/// Whether a push answer (`admin::PushResult` JSON) says queued.
fn queued_in(body: &str) -> bool {
    #[derive(Deserialize)]
    struct Queued {
        queued: bool,
    }
    serde_json::from_str::<Queued>(body).is_ok_and(|q| q.queued)
}

async fn read_claims(shared: Arc<Shared>, mut claims: async_nats::Subscriber) {
    while let Some(msg) = claims.next().await {
        let Some(batch) = wire::decode::<wire::Claims>(&msg.payload) else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        if batch.instance == shared.instance {
            continue;
        }
        add(&shared.counters.claims_received, batch.claims.len() as u64);
        let _ = shared.events.send(Event::Cluster(ClusterEvent::Claims {
            node: batch.node,
            claims: batch.claims,
        }));
    }
}

async fn read_heartbeats(shared: Arc<Shared>, mut beats: async_nats::Subscriber) {
    while let Some(msg) = beats.next().await {
        let Some(beat) = wire::decode::<wire::Heartbeat>(&msg.payload) else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        if beat.instance == shared.instance {
            continue;
        }
        let Ok(mut peers) = shared.peers.lock() else { return };
        match peers.heard(beat.instance, &beat.node, beat.devices, Instant::now()) {
            Heard::Joined => log::info!("cluster: node {} joined", beat.node),
            Heard::DuplicateName => log::error!(
                "cluster: two processes call themselves node {}; give each node its own --node-id",
                beat.node
            ),
            Heard::Known => {}
        }
        if beat.node == shared.opts.node {
            log::error!(
                "cluster: another process uses this node's name ({}); give each node its own --node-id",
                beat.node
            );
        }
    }
}

async fn send_heartbeats(shared: Arc<Shared>, client: async_nats::Client) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        every.tick().await;
        let beat = wire::Heartbeat {
            instance: shared.instance,
            node: shared.opts.node.clone(),
            devices: shared.counters.devices.load(Ordering::Relaxed),
        };
        let _ = client.publish(shared.subjects.node.clone(), wire::encode(&beat)).await;
        if let Ok(mut peers) = shared.peers.lock() {
            for node in peers.expire(Instant::now()) {
                log::warn!(
                    "cluster: node {node} left (no heartbeat for {:?}); its devices are not connected any more",
                    peers::PEER_TTL
                );
            }
        }
    }
}

/// Answers to this node's push questions, to the question they answer.
async fn read_replies(shared: Arc<Shared>, mut replies: async_nats::Subscriber) {
    while let Some(msg) = replies.next().await {
        let ask = msg.subject.rsplit('.').next().and_then(|n| n.parse::<u64>().ok());
        let (Some(ask), Some(reply)) = (ask, wire::decode::<wire::PushReply>(&msg.payload)) else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        if let Some(to) = shared.asks.lock().ok().and_then(|a| a.get(&ask).cloned()) {
            let _ = to.send(reply);
        }
    }
}

/// A push: this node's own answer (`local`) and every live node's, combined into one answer.
async fn ask_everyone(
    shared: Arc<Shared>,
    client: async_nats::Client,
    ask: u64,
    id: String,
    payload: String,
    local: oneshot::Receiver<Answer>,
    request: Responder,
) {
    let expected: HashMap<u64, String> = shared
        .peers
        .lock()
        .map(|p| p.live().into_iter().collect())
        .unwrap_or_default();
    let connected = shared.counters.connected.load(Ordering::Relaxed);
    let (tx, mut rx) = tmpsc::unbounded_channel();
    let mut answers: Vec<wire::PushReply> = Vec::new();
    if connected && !expected.is_empty() {
        if let Ok(mut asks) = shared.asks.lock() {
            asks.insert(ask, tx);
        }
        add(&shared.counters.pushes_asked, 1);
        let question = wire::PushAsk {
            instance: shared.instance,
            id: id.clone(),
            payload,
        };
        let reply_to = format!("{}.{ask}", shared.subjects.replies(shared.instance));
        let _ = client
            .publish_with_reply(shared.subjects.push.clone(), reply_to, wire::encode(&question))
            .await;
        let deadline = tokio::time::Instant::now() + PUSH_ASK_TIMEOUT;
        while answers.len() < expected.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(reply)) => {
                    let queued = reply.queued;
                    if !answers.iter().any(|a| a.instance == reply.instance) {
                        answers.push(reply);
                    }
                    if queued {
                        break; // a device is held by one node: nobody else can say yes
                    }
                }
                _ => break,
            }
        }
        if let Ok(mut asks) = shared.asks.lock() {
            asks.remove(&ask);
        }
    } else if !connected {
        add(&shared.counters.pushes_not_asked, 1);
    }
    let local = local.await.ok();
    let mut result: serde_json::Value = local
        .as_ref()
        .and_then(|a| serde_json::from_str(&a.body).ok())
        .unwrap_or_else(|| serde_json::json!({ "id": id, "queued": false }));
    let status = local.as_ref().map_or(500, |a| a.status);
    let queued_here = result["queued"].as_bool().unwrap_or(false);
    let elsewhere = answers.iter().find(|a| a.queued);
    if queued_here {
        result["node"] = shared.opts.node.clone().into();
    } else if let Some(holder) = elsewhere {
        add(&shared.counters.pushes_queued_elsewhere, 1);
        result["queued"] = true.into();
        result["node"] = holder.node.clone().into();
        result["result"] = format!("queued to a connected device on node {}", holder.node).into();
    } else if !connected {
        result["result"] = format!(
            "not connected to this node; the other nodes could not be asked (the cluster broker at {} is unreachable)",
            redact_url(&shared.opts.url)
        )
        .into();
        result["nodes_not_asked"] = true.into();
    } else {
        let silent: Vec<&String> = expected
            .iter()
            .filter(|(i, _)| !answers.iter().any(|a| a.instance == **i))
            .map(|(_, node)| node)
            .collect();
        if !silent.is_empty() {
            add(&shared.counters.push_answers_missing, silent.len() as u64);
            result["result"] = format!(
                "not connected to any node that answered; no answer within {PUSH_ASK_TIMEOUT:?} from {silent:?}"
            )
            .into();
            result["nodes_silent"] = serde_json::json!(silent);
        }
    }
    request.respond_json(status, &result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(redact_url("nats://a:secret@10.0.0.1:4222"), "nats://…@10.0.0.1:4222");
        assert_eq!(redact_url("nats://10.0.0.1:4222"), "nats://10.0.0.1:4222");
    }

    #[test]
    fn a_push_answer_says_queued_or_not() {
        assert!(queued_in(r#"{"id":"a","seq":1,"queued":true,"result":"x"}"#));
        assert!(!queued_in(r#"{"id":"a","queued":false}"#));
        assert!(!queued_in("not json"));
    }
}
