//! A monotonic clock that starts at the first reading in the process. Nothing below the drivers
//! reads it: the core and the stack are handed the time, so tests run them on virtual time.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Time since the first call in this process.
pub fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// [`since_start`] in microseconds.
pub fn micros() -> u64 {
    since_start().as_micros() as u64
}

/// [`since_start`] in milliseconds.
pub fn millis() -> u64 {
    since_start().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back() {
        let a = micros();
        std::thread::sleep(Duration::from_millis(2));
        let b = micros();
        assert!(b >= a + 2000, "{a} then {b}");
        assert!(millis() >= b / 1000);
    }
}
