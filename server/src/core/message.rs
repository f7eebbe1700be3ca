//! The push messages the server sends. Every message starts with `{"ts":<unix ns>` — the wall-clock
//! time the push began — so any client on the same clock can compute delivery latency, and the load
//! generator can find the timestamp without a JSON parser.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// What kind of push a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// To every connection (periodic push or `POST /broadcast`).
    Broadcast,
    /// To one device (`POST /push?id=…`).
    Push,
}

/// The prefix every push message starts with.
pub const TS_PREFIX: &str = "{\"ts\":";

pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Where this run's sequence numbers start: the wall-clock time in milliseconds × 1000, so a
/// run's numbers are all above any earlier run's (unless it issued 1,000 per millisecond of its
/// life) and a `since` from before a restart is seen as such; below 2^53, exact in JavaScript,
/// until the year 2255.
pub fn first_seq() -> u64 {
    unix_ns() / 1_000_000 * 1000
}

/// Format a push: `{"ts":…,"seq":…,"kind":…,"data":…}`; `data` is the admin's text (JSON-escaped)
/// or, for the periodic push, the server's current time (seed 000's message).
pub fn format_push(ts_ns: u64, seq: u64, kind: Kind, data: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Push<'a> {
        ts: u64,
        seq: u64,
        kind: Kind,
        data: &'a str,
    }
    let now_text;
    let data = match data {
        Some(d) => d,
        None => {
            now_text = format!("server time {}.{:09}", ts_ns / 1_000_000_000, ts_ns % 1_000_000_000);
            &now_text
        }
    };
    // Serializing plain fields into a String cannot fail.
    serde_json::to_string(&Push {
        ts: ts_ns,
        seq,
        kind,
        data,
    })
    .expect("push message serializes")
}

/// The timestamp of a push message, if `payload` is one.
pub fn parse_ts(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(TS_PREFIX.as_bytes())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// What a client that reconnected with `?since=SEQ` gets first when the broadcasts after SEQ are
/// no longer all in the log: `{"ts":…,"seq":0,"kind":"gap","since":SEQ,"oldest":OLDEST}`, where
/// OLDEST is the first broadcast still kept (the live ones follow). The application resyncs.
pub fn format_gap(ts_ns: u64, since: u64, oldest: u64) -> String {
    format!("{TS_PREFIX}{ts_ns},\"seq\":0,\"kind\":\"gap\",\"since\":{since},\"oldest\":{oldest}}}")
}

/// Whether a push message is a targeted push (the load generator counts those per device).
pub fn is_targeted(payload: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"kind\":\"push\",";
    payload.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_messages_carry_a_parseable_timestamp() {
        let m = format_push(1_732_170_000_123_456_789, 7, Kind::Broadcast, None);
        assert!(m.starts_with(TS_PREFIX));
        assert_eq!(parse_ts(m.as_bytes()), Some(1_732_170_000_123_456_789));
        assert!(!is_targeted(m.as_bytes()));
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["data"], "server time 1732170000.123456789");

        let m = format_push(5, 1, Kind::Push, Some("quote \" and \u{1F600}"));
        assert!(is_targeted(m.as_bytes()));
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["data"], "quote \" and \u{1F600}");
        assert_eq!(parse_ts(b"hello"), None);
        let g: serde_json::Value = serde_json::from_str(&format_gap(9, 4, 7)).unwrap();
        assert_eq!(
            (g["kind"].as_str(), g["since"].as_u64(), g["oldest"].as_u64()),
            (Some("gap"), Some(4), Some(7))
        );
    }
}
