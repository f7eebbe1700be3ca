//! The stack's time: smoltcp `Instant`s from a monotonic clock started with the process (the
//! stack itself never reads a clock, so tests can run it on virtual time).

use std::sync::OnceLock;

use smoltcp::time::Instant;

static START: OnceLock<std::time::Instant> = OnceLock::new();

/// Monotonic time since the first call, as a smoltcp `Instant`.
pub fn now() -> Instant {
    let start = *START.get_or_init(std::time::Instant::now);
    Instant::from_micros(start.elapsed().as_micros() as i64)
}
