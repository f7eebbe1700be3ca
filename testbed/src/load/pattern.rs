//! Message bodies whose every byte can be checked: `pattern:` followed by bytes that depend on
//! their position. The benchmark and the tests broadcast them; the load generator checks every
//! byte of every one it receives, also when a large one arrives in pieces.

/// What a pattern body starts with (in the push JSON: `"data":"pattern:…"`).
pub const PREFIX: &str = "pattern:";
const MARK: &[u8] = b"\"data\":\"pattern:";

/// The byte at position `i` of a pattern (letters only: nothing JSON escapes).
pub fn byte(i: u32) -> u8 {
    b'a' + (i % 26) as u8
}

/// A body of `len` bytes (at least the prefix): `pattern:abcdefghij…`.
pub fn text(len: usize) -> String {
    let mut s = String::with_capacity(len.max(PREFIX.len()));
    s.push_str(PREFIX);
    s.extend((0..len.saturating_sub(PREFIX.len()) as u32).map(|i| byte(i) as char));
    s
}

/// Where a check of one message stands; fits in 31 bits of a `u32` (bit 31 is always 0), kept
/// per connection while a large message arrives in pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check(u32);

// Bit 31 is left to the caller (the load generator keeps "targeted" there).
const NOT_PATTERN: u32 = 1 << 30;
const DONE: u32 = 1 << 29;
const CORRUPT: u32 = 1 << 28;
const INDEX: u32 = (1 << 28) - 1;

/// What checking a piece found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Pattern bytes checked.
    pub checked: u64,
    /// A byte that was not the pattern's (reported once per message).
    pub corrupt: bool,
}

impl Check {
    /// Start on the first piece of a message's payload (which holds the JSON head).
    pub fn start(first: &[u8]) -> (Check, Found) {
        match first.windows(MARK.len()).position(|w| w == MARK) {
            Some(at) => Check(0).feed(&first[at + MARK.len()..]),
            None => (Check(NOT_PATTERN), Found::default()),
        }
    }

    /// Check the next piece of the payload.
    pub fn feed(self, piece: &[u8]) -> (Check, Found) {
        let mut state = self.0;
        let mut found = Found::default();
        if state & (NOT_PATTERN | DONE | CORRUPT) != 0 {
            return (self, found);
        }
        for &b in piece {
            let i = state & INDEX;
            if b == b'"' {
                state |= DONE; // the end of the data string: the rest is JSON
                break;
            }
            if b != byte(i) {
                state |= CORRUPT;
                found.corrupt = true;
                break;
            }
            found.checked += 1;
            state = (state & !INDEX) | ((i + 1) & INDEX);
        }
        (Check(state), found)
    }

    /// Whether the message was a pattern that ended before its closing quote: cut short.
    pub fn truncated(self) -> bool {
        self.0 & (NOT_PATTERN | DONE | CORRUPT) == 0
    }

    /// As a `u32`, to keep per connection.
    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn from_bits(bits: u32) -> Check {
        Check(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(data: &str) -> Vec<u8> {
        format!("{{\"ts\":1,\"seq\":2,\"kind\":\"broadcast\",\"data\":\"{data}\"}}").into_bytes()
    }

    #[test]
    fn a_pattern_checks_whole_or_in_any_pieces_and_a_changed_byte_is_found() {
        let good = json(&text(5000));
        let (check, found) = Check::start(&good);
        assert_eq!(
            found,
            Found {
                checked: 4992,
                corrupt: false
            }
        );
        assert!(!check.truncated());
        for cut in [60, 61, 100, 2000, 4999] {
            let (mut check, mut total) = Check::start(&good[..cut]);
            let (c, f) = check.feed(&good[cut..]);
            check = c;
            total.checked += f.checked;
            assert_eq!(
                (total.checked, total.corrupt, check.truncated()),
                (4992, false, false),
                "cut {cut}"
            );
        }
        let mut bad = good.clone();
        bad[3000] ^= 1;
        assert!(Check::start(&bad).1.corrupt);
        let (short, _) = Check::start(&good[..3000]);
        assert!(short.truncated(), "no closing quote: cut short");
        let (other, found) = Check::start(&json("server time 5"));
        assert_eq!(
            (found.checked, other.truncated()),
            (0, false),
            "not a pattern: nothing checked"
        );
    }
}
