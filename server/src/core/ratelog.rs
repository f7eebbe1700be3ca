//! Log lines about bad network input, at most a few per second: a hostile or broken client must not
//! be able to turn our log into its amplifier. What is held back is counted and reported with the
//! next line that gets through.

pub struct RateLimitedLog {
    per_second: u32,
    window_start_ms: u64,
    in_window: u32,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(per_second: u32) -> RateLimitedLog {
        RateLimitedLog {
            per_second,
            window_start_ms: 0,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Log `args` at warn level unless this second's quota is used up.
    pub fn warn(&mut self, now_ms: u64, args: std::fmt::Arguments<'_>) {
        if now_ms.saturating_sub(self.window_start_ms) >= 1000 {
            self.window_start_ms = now_ms;
            self.in_window = 0;
        }
        if self.in_window >= self.per_second {
            self.suppressed += 1;
            return;
        }
        self.in_window += 1;
        if self.suppressed > 0 {
            log::warn!("{args} ({} similar lines suppressed)", self.suppressed);
            self.suppressed = 0;
        } else {
            log::warn!("{args}");
        }
    }

    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_n_lines_per_second() {
        let mut log = RateLimitedLog::new(3);
        for _ in 0..10 {
            log.warn(5_000, format_args!("bad input"));
        }
        assert_eq!(log.suppressed(), 7);
        log.warn(6_000, format_args!("bad input"));
        assert_eq!(log.suppressed(), 0, "reported with the next line");
    }
}
