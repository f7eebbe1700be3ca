//! Command-line helpers shared by the binaries of the workspace.

use std::time::Duration;

/// The TCP stack a binary runs on (`--stack`), shared by the server and the load generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stack {
    /// Linux kernel TCP and epoll, sharded over processes (a process holds at most 20,000 files).
    Kernel,
    /// Userspace TCP over AF_XDP: no file descriptor per connection (needs root).
    Xdp,
}

/// A command line that makes no sense: the binaries exit with status 2 for it (as clap does for
/// its own usage errors), and 1 for every failure to run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A usage error, as an `anyhow::Error` that still says what it is (`e.is::<UsageError>()`).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Parse a duration: a number with an optional unit `ms`, `s`, `m` or `h` (a bare number is
/// seconds): `60`, `1.5s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (try 30s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit '{other}' in '{text}' (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parse `MIN-MAX` durations, e.g. `30-90` or `1s-3s`.
pub fn parse_duration_range(text: &str) -> Result<(Duration, Duration), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("'{text}' is not a range like 30-90 or 1s-3s"))?;
    let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
    if lo > hi {
        return Err(format!("range '{text}' has its minimum above its maximum"));
    }
    Ok((lo, hi))
}

/// Parse a byte size: a number with an optional `K`, `M` or `G` (binary multiples).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (number, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = number
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a size (try 4096, 16K, 1M)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("'{text}' is too large"))
}

/// Parse a browser origin and write it as browsers send it (RFC 6454 §6.2): `scheme://host[:port]`
/// in lower case, without the scheme's default port, no path, no trailing slash, at most
/// `MAX_ORIGIN` bytes of visible ASCII. CORS answers echo it, and browsers compare those bytes
/// exactly.
pub fn parse_origin(text: &str) -> Result<String, String> {
    use crate::core::http::MAX_ORIGIN;
    let bad = |why: &str| {
        Err(format!(
            "'{text}' is not an origin ({why}; e.g. https://app.example.com)"
        ))
    };
    let Some((scheme, rest)) = text.split_once("://") else {
        return bad("no scheme");
    };
    if text.len() > MAX_ORIGIN {
        return bad(&format!("longer than {MAX_ORIGIN} bytes"));
    }
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return bad("the scheme is not letters");
    }
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("no host, or spaces or non-ASCII in it");
    }
    if rest.contains(['/', '?', '#', '*', '@']) {
        return bad("an origin has no path, query, user or wildcard");
    }
    let origin = text.to_ascii_lowercase();
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => ":443",
        "http" | "ws" => ":80",
        _ => "",
    };
    Ok(match origin.strip_suffix(default_port) {
        Some(bare) if !default_port.is_empty() => bare.to_string(),
        _ => origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("-1").is_err());
        assert_eq!(
            parse_duration_range("30-90"),
            Ok((Duration::from_secs(30), Duration::from_secs(90)))
        );
        assert!(parse_duration_range("9-3").is_err());
        assert_eq!(parse_size("16K"), Ok(16384));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn origins() {
        assert_eq!(
            parse_origin("https://app.example").as_deref(),
            Ok("https://app.example")
        );
        assert!(parse_origin("http://[::1]:8080").is_ok());
        // As browsers send it: lower case, no default port.
        assert_eq!(
            parse_origin("HTTPS://App.Example:443").as_deref(),
            Ok("https://app.example")
        );
        assert_eq!(
            parse_origin("http://app.example:80").as_deref(),
            Ok("http://app.example")
        );
        assert_eq!(
            parse_origin("http://app.example:8080").as_deref(),
            Ok("http://app.example:8080")
        );
        for bad in [
            "app.example",
            "https://app.example/",
            "https://*.example",
            "https://",
            "https://a b",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
        assert!(parse_origin(&format!("https://{}", "a".repeat(200))).is_err());
    }
}
