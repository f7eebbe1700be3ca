//! The stack's time: smoltcp `Instant`s from the process's monotonic clock (`timing::clock`).
//! The stack itself never reads a clock, so tests run it on virtual time.

use smoltcp::time::Instant;

/// Monotonic time since the process's clock started, as a smoltcp `Instant`.
pub fn now() -> Instant {
    Instant::from_micros(timing::clock::micros() as i64)
}
