//! Who is in the cluster and who holds which device: heartbeats (live nodes, for pushes to wait
//! for), and claims (a device's newest registration wins on every node).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::peers::{Heard, PEER_TTL};
use super::wire::{self, Claims, Heartbeat};
use super::{add, publish, ClusterEvent, Event, Shared};
use crate::core::message;

/// How often a node says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A claim this far ahead of our clock is not believed (a clock that wrong, or a forged claim,
/// would win every conflict).
const CLAIM_FUTURE_LIMIT: Duration = Duration::from_secs(60);
/// Lines about invented or duplicate nodes, at most this often.
const COMPLAINT_EVERY: Duration = Duration::from_secs(60);

/// Announce `batch` (devices registered here). Made while the broker is away, they are dropped
/// and counted: those devices stay where they are until they reconnect.
pub(super) async fn send_claims(shared: Arc<Shared>, client: async_nats::Client, batch: Vec<(String, u64)>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    if !shared.connected() {
        add(&shared.counters.claims_dropped, n);
        return;
    }
    let msg = Claims {
        instance: shared.instance,
        node: shared.opts.node.clone(),
        claims: batch,
    };
    if publish(&client, shared.subjects.claim.clone(), wire::encode(&msg)).await {
        add(&shared.counters.claims_sent, n);
    } else {
        add(&shared.counters.claims_dropped, n);
    }
}

pub(super) async fn read_claims(shared: Arc<Shared>, mut claims: async_nats::Subscriber) {
    while let Some(msg) = claims.next().await {
        let Some(mut batch) = wire::decode::<Claims>(&msg.payload) else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        if batch.instance == shared.instance {
            continue;
        }
        let limit = message::unix_ns() + CLAIM_FUTURE_LIMIT.as_nanos() as u64;
        let before = batch.claims.len();
        batch.claims.retain(|(_, at)| *at <= limit);
        add(&shared.counters.bad_messages, (before - batch.claims.len()) as u64);
        add(&shared.counters.claims_received, batch.claims.len() as u64);
        let _ = shared.events.send(Event::Cluster(ClusterEvent::Claims {
            node: batch.node,
            claims: batch.claims,
        }));
    }
}

pub(super) async fn read_heartbeats(shared: Arc<Shared>, mut beats: async_nats::Subscriber) {
    let mut complained: Option<Instant> = None;
    let mut complain = |line: String| {
        if complained.is_none_or(|at| at.elapsed() >= COMPLAINT_EVERY) {
            complained = Some(Instant::now());
            log::error!("{line}");
        }
    };
    while let Some(msg) = beats.next().await {
        // A node's name is at most 64 bytes (`--node-id`): a longer one is not a node of ours,
        // and names are kept for every peer.
        let Some(beat) = wire::decode::<Heartbeat>(&msg.payload).filter(|b| b.node.len() <= 64) else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        if beat.instance == shared.instance {
            continue;
        }
        let Ok(mut peers) = shared.peers.lock() else { return };
        if beat.leaving {
            if let Some(node) = peers.left(beat.instance) {
                log::info!("cluster: node {node} left (it stopped)");
            }
            continue;
        }
        match peers.heard(beat.instance, &beat.node, beat.devices, Instant::now()) {
            Heard::Joined => log::info!("cluster: node {} joined", beat.node),
            Heard::DuplicateName => complain(format!(
                "cluster: two processes call themselves node {}; give each node its own --node-id",
                beat.node
            )),
            Heard::TooMany => {
                add(&shared.counters.bad_messages, 1);
                complain(format!(
                    "cluster: heartbeats from more than {} nodes; node {} is not counted",
                    super::peers::MAX_PEERS,
                    beat.node
                ));
            }
            Heard::Known => {}
        }
        if beat.node == shared.opts.node {
            complain(format!(
                "cluster: another process uses this node's name ({}); give each node its own --node-id",
                beat.node
            ));
        }
    }
}

fn heartbeat(shared: &Shared, leaving: bool) -> Heartbeat {
    Heartbeat {
        instance: shared.instance,
        node: shared.opts.node.clone(),
        devices: shared.counters.devices.load(std::sync::atomic::Ordering::Relaxed),
        leaving,
    }
}

pub(super) async fn send_heartbeats(shared: Arc<Shared>, client: async_nats::Client) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        every.tick().await;
        // While the broker is away nobody is heard, and nobody is forgotten for it.
        if !shared.connected() {
            continue;
        }
        publish(
            &client,
            shared.subjects.node.clone(),
            wire::encode(&heartbeat(&shared, false)),
        )
        .await;
        if let Ok(mut peers) = shared.peers.lock() {
            for node in peers.expire(Instant::now()) {
                log::warn!(
                    "cluster: node {node} left (no heartbeat for {PEER_TTL:?}); its devices are not connected any more"
                );
            }
        }
    }
}

/// Tell the other nodes this one is stopping (they stop waiting for its answers at once).
pub(super) async fn say_goodbye(shared: &Shared, client: &async_nats::Client) {
    if shared.connected() {
        publish(
            client,
            shared.subjects.node.clone(),
            wire::encode(&heartbeat(shared, true)),
        )
        .await;
    }
}
