//! The other nodes, as their heartbeats tell: a push waits for the answer of every live one, and a
//! node whose heartbeats stop is gone after `PEER_TTL` (its devices with it: nobody answers for
//! them any more). Sans-I/O: the caller gives the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A node silent this long is gone (three heartbeats missed).
pub const PEER_TTL: Duration = Duration::from_secs(3);
/// A node name heard from a new process after this much silence of the old one: a restart.
const RESTART_SILENCE: Duration = Duration::from_millis(1500);

struct Peer {
    node: String,
    devices: u64,
    heard: Instant,
}

/// A peer as `/stats` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    pub node: String,
    pub devices: u64,
    pub last_heard_ms: u64,
}

/// What a heartbeat changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// A node not known before.
    Joined,
    Known,
    /// Another process already uses this node name (two nodes configured alike).
    DuplicateName,
    /// Not taken: `MAX_PEERS` are known.
    TooMany,
}

/// Nodes known at most: heartbeats from more processes than this are ignored (whoever can
/// publish on the broker could invent nodes; every push waits for each known one).
pub const MAX_PEERS: usize = 256;

#[derive(Default)]
pub struct Peers {
    by_instance: HashMap<u64, Peer>,
}

impl Peers {
    pub fn heard(&mut self, instance: u64, node: &str, devices: u64, now: Instant) -> Heard {
        if let Some(peer) = self.by_instance.get_mut(&instance) {
            peer.devices = devices;
            peer.heard = now;
            return Heard::Known;
        }
        if self.by_instance.len() >= MAX_PEERS {
            return Heard::TooMany;
        }
        // The same name from another process: a restarted node (its predecessor fell silent:
        // it is forgotten now), or two live nodes configured alike (both keep beating).
        let duplicate = self
            .by_instance
            .values()
            .any(|p| p.node == node && now.saturating_duration_since(p.heard) < RESTART_SILENCE);
        self.by_instance.retain(|_, p| p.node != node || duplicate);
        self.by_instance.insert(
            instance,
            Peer {
                node: node.to_string(),
                devices,
                heard: now,
            },
        );
        if duplicate {
            Heard::DuplicateName
        } else {
            Heard::Joined
        }
    }

    /// A node said it is leaving: forget it at once; returns its name.
    pub fn left(&mut self, instance: u64) -> Option<String> {
        self.by_instance.remove(&instance).map(|p| p.node)
    }

    /// This node heard nobody for a while (its broker connection was down): every node gets a
    /// full `PEER_TTL` from `now` to be heard again.
    pub fn forgive(&mut self, now: Instant) {
        for p in self.by_instance.values_mut() {
            p.heard = now;
        }
    }

    /// Forget the nodes silent for `PEER_TTL`; returns their names.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.by_instance.retain(|_, p| {
            let alive = now.saturating_duration_since(p.heard) < PEER_TTL;
            if !alive {
                gone.push(p.node.clone());
            }
            alive
        });
        gone
    }

    /// The live nodes' instances and names (a push waits for each of their answers).
    pub fn live(&self) -> Vec<(u64, String)> {
        self.by_instance.iter().map(|(&i, p)| (i, p.node.clone())).collect()
    }

    pub fn report(&self, now: Instant) -> Vec<PeerReport> {
        let mut peers: Vec<PeerReport> = self
            .by_instance
            .values()
            .map(|p| PeerReport {
                node: p.node.clone(),
                devices: p.devices,
                last_heard_ms: now.saturating_duration_since(p.heard).as_millis() as u64,
            })
            .collect();
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_join_stay_while_heard_and_leave_after_the_ttl() {
        let t0 = Instant::now();
        let mut peers = Peers::default();
        assert_eq!(peers.heard(1, "a", 10, t0), Heard::Joined);
        assert_eq!(peers.heard(2, "b", 20, t0), Heard::Joined);
        assert_eq!(peers.heard(1, "a", 11, t0 + Duration::from_secs(2)), Heard::Known);
        assert!(peers.expire(t0 + Duration::from_millis(2999)).is_empty());
        assert_eq!(peers.expire(t0 + Duration::from_secs(3)), vec!["b".to_string()]);
        assert_eq!(peers.live(), vec![(1, "a".to_string())]);
        let report = peers.report(t0 + Duration::from_secs(3));
        assert_eq!((report[0].devices, report[0].last_heard_ms), (11, 1000));
        // Two live processes under one name.
        assert_eq!(
            peers.heard(3, "a", 0, t0 + Duration::from_secs(3)),
            Heard::DuplicateName
        );
        assert_eq!(peers.live().len(), 2);
        // A restarted node: a new instance under its old name, after its predecessor's silence.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(peers.heard(4, "a", 0, t1), Heard::Joined);
        assert_eq!(peers.live(), vec![(4, "a".to_string())]);
        // One that says it leaves is gone at once; after an outage of our own, nobody expires
        // before a full TTL.
        assert_eq!(peers.left(4), Some("a".to_string()));
        assert_eq!(peers.left(4), None);
        peers.heard(5, "b", 0, t1);
        peers.forgive(t1 + Duration::from_secs(10));
        assert!(peers.expire(t1 + Duration::from_secs(12)).is_empty());
    }

    #[test]
    fn invented_nodes_are_bounded() {
        let t0 = Instant::now();
        let mut peers = Peers::default();
        for i in 0..MAX_PEERS as u64 {
            assert_eq!(peers.heard(i, &format!("n{i}"), 0, t0), Heard::Joined);
        }
        assert_eq!(peers.heard(u64::MAX, "one more", 0, t0), Heard::TooMany);
        assert_eq!(peers.live().len(), MAX_PEERS);
    }
}
