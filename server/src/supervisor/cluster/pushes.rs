//! Pushes to a device on any node: this node's own answer and every live node's, combined into
//! the one answer the admin gets; and the other nodes' questions, answered here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::wire::{self, PushAsk, PushReply};
use super::{add, publish, redact_url, Answer, ClusterEvent, Event, Responder, Shared};

/// How long a push waits for the other nodes' answers.
const PUSH_ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A push to ask the other nodes about.
pub(super) struct Question {
    pub ask: u64,
    pub id: String,
    pub text: Option<String>,
    pub ts_ns: u64,
}

/// What an answer (`admin::PushResult` JSON) says.
#[derive(Deserialize)]
struct Outcome {
    queued: bool,
    #[serde(default)]
    seq: u64,
}

fn outcome(body: &str) -> Option<Outcome> {
    serde_json::from_str(body).ok()
}

/// Ask every live node about `q` while this node's own answer (`local`) comes in; answer
/// `request` as soon as one of them queued it (a device is held by one node), or once all have
/// said no, or after `PUSH_ASK_TIMEOUT`.
pub(super) async fn ask_everyone(
    shared: Arc<Shared>,
    client: async_nats::Client,
    q: Question,
    local: oneshot::Receiver<Answer>,
    request: Responder,
) {
    let expected: HashMap<u64, String> = shared
        .peers
        .lock()
        .map(|p| p.live().into_iter().collect())
        .unwrap_or_default();
    let (tx, mut replies) = tmpsc::unbounded_channel();
    let mut asked = false;
    if shared.connected() && !expected.is_empty() {
        if let Ok(mut asks) = shared.asks.lock() {
            asks.insert(q.ask, tx);
        }
        let question = PushAsk {
            instance: shared.instance,
            id: q.id.clone(),
            text: q.text.clone(),
            ts_ns: q.ts_ns,
        };
        let subject = shared.subjects.push.clone();
        let reply_to = format!("{}.{}", shared.subjects.replies(shared.instance), q.ask);
        asked = matches!(
            tokio::time::timeout(
                super::PUBLISH_TIMEOUT,
                client.publish_with_reply(subject, reply_to, wire::encode(&question))
            )
            .await,
            Ok(Ok(()))
        );
    }
    if asked {
        add(&shared.counters.pushes_asked, 1);
    } else if !expected.is_empty() {
        add(&shared.counters.pushes_not_asked, 1);
    }

    let deadline = tokio::time::Instant::now() + PUSH_ASK_TIMEOUT;
    let mut local = Some(local);
    let mut here: Option<Answer> = None;
    let mut answers: Vec<PushReply> = Vec::new();
    let mut queued_at: Option<PushReply> = None;
    loop {
        let local_done = local.is_none();
        let remote_done = !asked || answers.len() >= expected.len();
        let queued_here = here.as_ref().and_then(|a| outcome(&a.body)).is_some_and(|o| o.queued);
        if queued_here || queued_at.is_some() || (local_done && remote_done) {
            break;
        }
        tokio::select! {
            answer = async {
                match local.as_mut() {
                    Some(l) => l.await,
                    None => std::future::pending().await,
                }
            }, if !local_done => {
                here = answer.ok();
                local = None;
            }
            reply = replies.recv(), if !remote_done => match reply {
                // Only the nodes asked count, each once (a reply from anyone else is ignored).
                Some(r) if expected.contains_key(&r.instance) && !answers.iter().any(|a| a.instance == r.instance) => {
                    if r.queued {
                        queued_at = Some(r.clone());
                    }
                    answers.push(r);
                }
                Some(_) => add(&shared.counters.bad_messages, 1),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if let Ok(mut asks) = shared.asks.lock() {
        asks.remove(&q.ask);
    }
    // This node's own answer is always waited for (it comes from its workers, not the broker).
    if let Some(local) = local.take() {
        here = local.await.ok();
    }
    let mut result: serde_json::Value = here
        .as_ref()
        .and_then(|a| serde_json::from_str(&a.body).ok())
        .unwrap_or_else(|| serde_json::json!({ "id": q.id, "queued": false, "result": "this node did not answer" }));
    let mut status = here.as_ref().map_or(500, |a| a.status);
    let queued_here = result["queued"].as_bool().unwrap_or(false);
    result["nodes_asked"] = if asked { expected.len() } else { 0 }.into();
    if queued_here {
        result["node"] = shared.opts.node.clone().into();
    } else if let Some(holder) = queued_at {
        add(&shared.counters.pushes_queued_elsewhere, 1);
        status = 200;
        result["queued"] = true.into();
        result["seq"] = holder.seq.into();
        result["node"] = holder.node.clone().into();
        result["result"] = format!("queued to a connected device on node {}", holder.node).into();
    } else {
        add(&shared.counters.pushes_missed, 1);
        if !asked && !expected.is_empty() {
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
            if asked && !silent.is_empty() {
                add(&shared.counters.push_answers_missing, silent.len() as u64);
                result["result"] = format!(
                    "not connected to any node that answered; no answer within {PUSH_ASK_TIMEOUT:?} from {silent:?}"
                )
                .into();
                result["nodes_silent"] = serde_json::json!(silent);
            }
        }
    }
    request.respond_json(status, &result);
}

/// Another node's push question: asked of the supervisor, answered to the asker. A question the
/// supervisor dropped (it is stopping) gets no answer: the asker says this node was silent.
pub(super) async fn answer_asks(shared: Arc<Shared>, client: async_nats::Client, mut asks: async_nats::Subscriber) {
    while let Some(msg) = asks.next().await {
        // At most the admin's body: whoever can publish on the broker could send more.
        let ask = wire::decode::<PushAsk>(&msg.payload)
            .filter(|a| a.text.as_ref().is_none_or(|t| t.len() <= crate::admin::MAX_BODY));
        let (Some(ask), Some(reply_to)) = (ask, msg.reply.clone()) else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        if ask.instance == shared.instance {
            continue; // our own question: this node answers it locally
        }
        let (reply, answer) = Responder::pair();
        let _ = shared.events.send(Event::Cluster(ClusterEvent::PushAsk {
            id: ask.id,
            text: ask.text,
            ts_ns: ask.ts_ns,
            reply,
        }));
        let shared = Arc::clone(&shared);
        let client = client.clone();
        tokio::spawn(async move {
            let Some(done) = answer.await.ok().and_then(|a| outcome(&a.body)) else {
                return;
            };
            add(&shared.counters.pushes_answered, 1);
            let reply = PushReply {
                instance: shared.instance,
                node: shared.opts.node.clone(),
                queued: done.queued,
                seq: done.seq,
            };
            publish(&client, reply_to.to_string(), wire::encode(&reply)).await;
        });
    }
}

/// Answers to this node's push questions, to the question they answer.
pub(super) async fn read_replies(shared: Arc<Shared>, mut replies: async_nats::Subscriber) {
    while let Some(msg) = replies.next().await {
        let ask = msg.subject.rsplit('.').next().and_then(|n| n.parse::<u64>().ok());
        let (Some(ask), Some(reply)) = (ask, wire::decode::<PushReply>(&msg.payload)) else {
            add(&shared.counters.bad_messages, 1);
            continue;
        };
        // An answer after its push was answered (too late) has nowhere to go.
        if let Some(to) = shared.asks.lock().ok().and_then(|a| a.get(&ask).cloned()) {
            let _ = to.send(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_answer_says_queued_or_not() {
        let o = outcome(r#"{"id":"a","seq":7,"queued":true,"result":"x"}"#).unwrap();
        assert!(o.queued && o.seq == 7);
        assert!(!outcome(r#"{"id":"a","queued":false}"#).unwrap().queued);
        assert!(outcome("not json").is_none());
    }
}
