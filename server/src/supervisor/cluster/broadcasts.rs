//! Broadcasts through the stream: published once by the node where they are posted, read back
//! by every node (that one included) and numbered by the stream for all of them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use futures_util::StreamExt;

use super::wire::{Subjects, HEADER_KIND, HEADER_NODE, HEADER_REQUEST, HEADER_TS};
use super::{add, redact_url, ClusterEvent, Event, Responder, Shared, PUBLISH_TIMEOUT};
use crate::core::message;

/// Broadcasts the stream keeps (for nodes that were away; older ones are not needed: `since`
/// recovery is bounded by each node's message log anyway).
const STREAM_MAX_MSGS: i64 = 100_000;
const STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Admin answers waiting for their broadcast to come back from the stream, at most; one older
/// than `WAITING_FOR` is given up (the admin stopped waiting for it long before).
const MAX_WAITING_ANSWERS: usize = 10_000;
const WAITING_FOR: Duration = Duration::from_secs(60);

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
            "making or finding the JetStream stream {} (is JetStream on? nats-server -js)",
            subjects.stream
        )
    })
}

/// The stream's number base and its last sequence.
pub(super) async fn open_stream(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<(u64, u64)> {
    let mut stream = stream(js, subjects).await?;
    let info = stream.info().await.context("reading the broadcast stream's state")?;
    Ok((seq_base(&info.created), info.state.last_sequence))
}

/// Publish one broadcast. Its admin request (`request`) is answered when the message comes back
/// from the stream and has been fanned out here (it carries the request's id), or at once if it
/// could not be published.
pub(super) async fn publish(
    shared: Arc<Shared>,
    js: jetstream::Context,
    text: Option<String>,
    request: Option<Responder>,
) {
    let refuse = |request: Option<Responder>, status: u16, why: String| {
        log::error!("cluster: a broadcast was not published: {why}");
        if let Some(request) = request {
            request.respond_json(status, &serde_json::json!({ "published": false, "error": why }));
        }
    };
    if !shared.connected() {
        add(&shared.counters.broadcasts_not_published, 1);
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
    // Registered before publishing: the message may come back before its acknowledgement.
    let request_id = request.and_then(|request| {
        let id = format!(
            "{:016x}-{}",
            shared.instance,
            shared.next_request.fetch_add(1, Ordering::Relaxed)
        );
        let mut waiting = shared.waiting.lock().ok()?;
        if waiting.len() >= MAX_WAITING_ANSWERS {
            waiting.retain(|_, (since, _)| since.elapsed() < WAITING_FOR);
        }
        if waiting.len() >= MAX_WAITING_ANSWERS {
            request.respond_json(503, &serde_json::json!({ "published": false, "error": "too many broadcasts waiting to come back from the stream" }));
            return None;
        }
        waiting.insert(id.clone(), (Instant::now(), request));
        Some(id)
    });
    if let Some(id) = &request_id {
        headers.insert(HEADER_REQUEST, id.as_str());
    }
    let payload = text.unwrap_or_default();
    let acked = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        js.publish_with_headers(shared.subjects.broadcast.clone(), headers, payload.into())
            .await?
            .await
            .map_err(anyhow::Error::from)
    })
    .await;
    let waiting_answer = || {
        let id = request_id.as_ref()?;
        shared.waiting.lock().ok()?.remove(id).map(|(_, r)| r)
    };
    match acked {
        Ok(Ok(_)) => add(&shared.counters.broadcasts_published, 1),
        Ok(Err(e)) => {
            add(&shared.counters.broadcasts_not_published, 1);
            refuse(
                waiting_answer(),
                503,
                format!("not published: the broker refused it: {e}"),
            );
        }
        Err(_) => {
            add(&shared.counters.broadcasts_unconfirmed, 1);
            refuse(
                waiting_answer(),
                504,
                format!("unknown: the broker did not confirm within {PUBLISH_TIMEOUT:?}; it may still be delivered"),
            );
        }
    }
}

/// Read the stream, from after `last` on, for as long as the node runs: each broadcast goes to
/// the supervisor, numbered. A consumer that fails or goes back (async-nats' ordered consumer
/// starts over from the beginning if it resets before delivering anything) is made again,
/// starting after the last broadcast delivered.
pub(super) async fn read(shared: Arc<Shared>, js: jetstream::Context, mut base: u64, mut last: u64) {
    loop {
        if let Err(e) = consume(&shared, &js, &mut base, &mut last).await {
            log::warn!("cluster: reading broadcasts: {e:#}; reading again after {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn consume(shared: &Shared, js: &jetstream::Context, base: &mut u64, last: &mut u64) -> anyhow::Result<()> {
    let mut stream = stream(js, &shared.subjects).await?;
    let info = stream.info().await.context("reading the broadcast stream's state")?;
    let now_base = seq_base(&info.created);
    if now_base != *base {
        // Deleted and made again (an operator): its numbers start over, after a later base.
        log::error!(
            "cluster: stream {} was made again; numbering its broadcasts from its new start",
            shared.subjects.stream
        );
        *base = now_base;
        *last = 0;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: shared.subjects.broadcast.clone(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: last.saturating_add(1),
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
            add(&shared.counters.replays_skipped, 1);
            bail!("the consumer went back to broadcast {stream_seq}");
        }
        *last = stream_seq;
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let request = header(HEADER_REQUEST)
            .and_then(|id| shared.waiting.lock().ok()?.remove(&id))
            .map(|(_, r)| r);
        // Whoever can publish on the broker could store anything in the stream: a body over
        // the admin's limit is not a broadcast of ours (skipped; its number stays unused).
        if msg.payload.len() > crate::admin::MAX_BODY {
            add(&shared.counters.bad_messages, 1);
            log::error!(
                "cluster: stream message {stream_seq} holds {} bytes, over the 64 KiB a broadcast may have: skipped",
                msg.payload.len()
            );
            continue;
        }
        let ts_ns = header(HEADER_TS).and_then(|t| t.parse().ok()).unwrap_or(published);
        let periodic = header(HEADER_KIND).as_deref() == Some("periodic");
        let text = (!periodic).then(|| String::from_utf8_lossy(&msg.payload).into_owned());
        // Sequences come from the broker: no arithmetic on them may overflow.
        let seq = base.saturating_add(stream_seq);
        let c = &shared.counters;
        add(&c.broadcasts_received, 1);
        c.last_seq.store(seq, Ordering::Relaxed);
        c.lag_messages.store(pending, Ordering::Relaxed);
        c.lag_ms
            .store(message::unix_ns().saturating_sub(ts_ns) / 1_000_000, Ordering::Relaxed);
        let _ = shared.events.send(Event::Cluster(ClusterEvent::Broadcast {
            seq,
            ts_ns,
            text,
            request,
        }));
    }
    Ok(())
}
