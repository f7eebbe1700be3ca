//! What nodes say to each other through the broker: subjects, and one small JSON message per
//! kind. Everything here is read from the network: decoding never panics, and a message that does
//! not decode is counted and dropped by the caller.

use serde::{Deserialize, Serialize};

/// The subjects and the stream of one cluster (`--cluster-name`): several clusters can share a
/// broker.
#[derive(Clone, Debug)]
pub struct Subjects {
    /// Broadcasts, stored in the stream (which numbers them for every node).
    pub broadcast: String,
    /// A push for a device some node may hold: every node is asked.
    pub push: String,
    /// Devices that registered on a node: an older connection elsewhere is closed.
    pub claim: String,
    /// Heartbeats: which nodes are alive (and must answer a push).
    pub node: String,
    /// The JetStream stream holding the broadcasts.
    pub stream: String,
    prefix: String,
}

impl Subjects {
    pub fn new(cluster: &str) -> Subjects {
        Subjects {
            broadcast: format!("{cluster}.broadcast"),
            push: format!("{cluster}.push"),
            claim: format!("{cluster}.claim"),
            node: format!("{cluster}.node"),
            stream: format!("{}_BROADCASTS", cluster.to_ascii_uppercase()),
            prefix: cluster.to_string(),
        }
    }

    /// Where the answers to one node's push questions come (`.<ask>` appended).
    pub fn replies(&self, instance: u64) -> String {
        format!("{}.reply.{instance:016x}", self.prefix)
    }
}

/// Whether `name` may name a cluster: it becomes a subject token and, upper-cased, part of a
/// stream name (so lower case only: two names never make one stream).
pub fn valid_cluster_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Headers of a broadcast in the stream.
pub const HEADER_TS: &str = "Ws-Ts";
pub const HEADER_NODE: &str = "Ws-Node";
/// `periodic`: the server's own push (its data is the receiving node's clock), else the admin's.
pub const HEADER_KIND: &str = "Ws-Kind";

/// Identifies a broadcast's admin request (`<instance>-<n>`): the posting node finds its answer
/// when the message comes back from the stream.
pub const HEADER_REQUEST: &str = "Ws-Req";

/// "Does any of you hold this device? Push this to it."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAsk {
    /// The asking process (a node ignores its own question).
    pub instance: u64,
    pub id: String,
    /// The admin's body (None: the server's time) and when it was posted: the holding node
    /// formats the push, numbered after the broadcasts it has handed out.
    pub text: Option<String>,
    pub ts_ns: u64,
}

/// A node's answer to a `PushAsk`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReply {
    pub instance: u64,
    pub node: String,
    pub queued: bool,
    /// The number the push carried there.
    #[serde(default)]
    pub seq: u64,
}

/// Devices registered on a node, with when (Unix ns): the newest connection of a device wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub instance: u64,
    pub node: String,
    pub claims: Vec<(String, u64)>,
}

/// "I am alive": sent every `HEARTBEAT_EVERY`; `leaving` once when a node stops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub instance: u64,
    pub node: String,
    /// Devices held by the node.
    pub devices: u64,
    #[serde(default)]
    pub leaving: bool,
}

pub fn encode<T: Serialize>(msg: &T) -> bytes::Bytes {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(msg).unwrap_or_default().into()
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_none() {
        let ask = PushAsk {
            instance: 7,
            id: "dev-1".into(),
            text: Some("hello".into()),
            ts_ns: 5,
        };
        assert_eq!(decode::<PushAsk>(&encode(&ask)), Some(ask));
        let claims = Claims {
            instance: 1,
            node: "n1".into(),
            claims: vec![("a".into(), 5), ("b".into(), 6)],
        };
        assert_eq!(decode::<Claims>(&encode(&claims)), Some(claims));
        assert_eq!(decode::<Claims>(b"\xff{not json"), None);
        assert_eq!(decode::<PushReply>(br#"{"instance":1}"#), None, "fields missing");
    }

    #[test]
    fn names_become_subjects_and_a_stream() {
        let s = Subjects::new("push_eu1");
        assert_eq!(s.broadcast, "push_eu1.broadcast");
        assert_eq!(s.stream, "PUSH_EU1_BROADCASTS");
        assert_eq!(s.replies(255), "push_eu1.reply.00000000000000ff");
        assert!(valid_cluster_name("ws"));
        for bad in ["", "a.b", "a b", "a*", "a>", "WS", "a-b", &"x".repeat(33)] {
            assert!(!valid_cluster_name(bad), "{bad:?}");
        }
    }
}
