//! Bounded fuzzing (property tests with proptest) of the stack's frame parser, `wire::parse`: the
//! first code that sees each received Ethernet frame, before smoltcp. Any bytes must be answered
//! with a `Segment` whose ranges lie inside the frame, or a `NotTcp`: never a panic or an
//! out-of-bounds index.
//!
//! Run time: each property runs a fixed number of cases (see `cases(..)` below; the whole file takes
//! about a second in a debug build). For a longer run, override the count for every property:
//!
//! ```text
//! PROPTEST_CASES=1000000 cargo test --release -p stack --test fuzz_wire
//! ```
//!
//! Reproducibility: the random seed is fixed (`SEED`) so every run of the suite tests the same
//! cases; `PROPTEST_RNG_SEED=<u64>` explores others. A failure prints the shrunk input and is
//! appended to `stack/tests/fuzz_wire.proptest-regressions`, which proptest replays first on every
//! later run: commit that file with the fix.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use stack::wire::{parse, EthShim, FourTuple, NotTcp, Segment, ETH_HEADER};

/// The fixed seed of the default run (any value; changing it changes the cases tested).
const SEED: u64 = 0x6675_7a7a_5f73_7463;

/// The suite's configuration (`testkit::fuzz::config`) with this file's seed.
fn cases(default_cases: u32) -> Config {
    testkit::fuzz::config(default_cases, SEED)
}

/// A TCP/IPv4 frame as a peer sends it, field by field (checksums are not checked by `parse`).
#[derive(Clone, Debug)]
struct TcpFrame {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    ip_options: Vec<u8>,
    /// TCP options (a multiple of 4 bytes, at most 40).
    tcp_options: Vec<u8>,
    payload: Vec<u8>,
    /// The DF bit is allowed; MF and a fragment offset are not (smoltcp does no reassembly).
    dont_fragment: bool,
    ttl: u8,
    tos: u8,
    ident: u16,
    /// Ethernet padding after the IP packet (a short frame is padded to 60 bytes).
    padding: Vec<u8>,
}

impl TcpFrame {
    fn ip_len(&self) -> usize {
        20 + self.ip_options.len() + 20 + self.tcp_options.len() + self.payload.len()
    }

    fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let ihl = (20 + self.ip_options.len()) / 4;
        f.push(0x40 | ihl as u8);
        f.push(self.tos);
        f.extend_from_slice(&(self.ip_len() as u16).to_be_bytes());
        f.extend_from_slice(&self.ident.to_be_bytes());
        f.extend_from_slice(&(if self.dont_fragment { 0x4000u16 } else { 0 }).to_be_bytes());
        f.push(self.ttl);
        f.push(6);
        f.extend_from_slice(&[0, 0]); // checksum
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.ip_options);
        f.extend_from_slice(&self.sport.to_be_bytes());
        f.extend_from_slice(&self.dport.to_be_bytes());
        f.extend_from_slice(&[0; 8]); // sequence and acknowledgment numbers
        let data_offset = (20 + self.tcp_options.len()) / 4;
        f.push((data_offset as u8) << 4);
        f.push(self.flags);
        f.extend_from_slice(&[0; 6]); // window, checksum, urgent pointer
        f.extend_from_slice(&self.tcp_options);
        f.extend_from_slice(&self.payload);
        f.extend_from_slice(&self.padding);
        f
    }
}

/// Options: 0 to 10 words.
fn options() -> impl Strategy<Value = Vec<u8>> {
    (0..=10usize).prop_flat_map(|words| prop::collection::vec(any::<u8>(), words * 4))
}

fn tcp_frame() -> impl Strategy<Value = TcpFrame> {
    (
        (any::<[u8; 6]>(), any::<[u8; 6]>(), any::<[u8; 4]>(), any::<[u8; 4]>()),
        (any::<u16>(), any::<u16>(), any::<u8>()),
        (options(), options(), prop::collection::vec(any::<u8>(), 0..100)),
        (
            any::<bool>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..30),
        ),
    )
        .prop_map(
            |(
                (dst_mac, src_mac, src, dst),
                (sport, dport, flags),
                (ip_options, tcp_options, payload),
                (dont_fragment, ttl, tos, ident, padding),
            )| TcpFrame {
                dst_mac,
                src_mac,
                src,
                dst,
                sport,
                dport,
                flags,
                ip_options,
                tcp_options,
                payload,
                dont_fragment,
                ttl,
                tos,
                ident,
                padding,
            },
        )
}

/// Flip bytes at the given places, most often in the headers.
fn mutate(bytes: &mut [u8], flips: &[(Index, bool, u8)]) {
    for (at, in_headers, xor) in flips {
        let len = if *in_headers {
            bytes.len().min(ETH_HEADER + 40)
        } else {
            bytes.len()
        };
        let i = at.index(len);
        bytes[i] ^= xor.max(&1);
    }
}

fn flips() -> impl Strategy<Value = Vec<(Index, bool, u8)>> {
    prop::collection::vec((any::<Index>(), any::<bool>(), any::<u8>()), 1..4)
}

/// What holds for any frame `parse` accepts: its ranges lie inside the frame, the IPv4 packet there
/// is long enough for both headers, and the fields returned are the ones at their places.
fn check_segment(frame: &[u8], s: &Segment) {
    assert_eq!(s.ip_start, ETH_HEADER);
    assert!(
        s.ip_start <= s.ip_end && s.ip_end <= frame.len(),
        "{s:?} in {} bytes",
        frame.len()
    );
    let ip = &frame[s.ip_start..s.ip_end];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert!(ip[0] >> 4 == 4 && ihl >= 20 && ip.len() >= ihl + 20, "{s:?}");
    assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
    assert_eq!(ip[9], 6);
    let tcp = &ip[ihl..];
    assert_eq!(s.tuple.remote_addr, ip[12..16]);
    assert_eq!(s.tuple.local_addr, ip[16..20]);
    assert_eq!(s.tuple.remote_port, u16::from_be_bytes([tcp[0], tcp[1]]));
    assert_eq!(s.tuple.local_port, u16::from_be_bytes([tcp[2], tcp[3]]));
    assert_eq!(s.flags, tcp[13]);
    assert_eq!(s.src_mac, frame[6..12]);
}

fn check_parse(frame: &[u8]) -> Result<Segment, NotTcp> {
    let parsed = parse(frame);
    if let Ok(s) = &parsed {
        check_segment(frame, s);
    }
    parsed
}

proptest! {
    #![proptest_config(cases(5000))]

    /// Any bytes at all: no panic, and anything accepted is consistent with the bytes.
    #[test]
    fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
        let _ = check_parse(&bytes);
    }

    /// Any bytes behind an IPv4 Ethernet header and an IPv4 version nibble, so that the length and
    /// protocol checks are reached.
    #[test]
    fn any_ipv4_looking_bytes(rest in prop::collection::vec(any::<u8>(), 0..120), first in any::<u8>()) {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
        frame.push(0x40 | (first & 0x0f));
        frame.extend_from_slice(&rest);
        let _ = check_parse(&frame);
    }

    /// A frame built from a random valid IPv4/TCP header (options, payload, Ethernet padding) parses
    /// to the 4-tuple seen from our side, its flags, the sender's MAC and the exact IPv4 packet.
    #[test]
    fn valid_frames_round_trip(f in tcp_frame()) {
        let bytes = f.bytes();
        let s = check_parse(&bytes).map_err(|e| TestCaseError::fail(format!("{e:?} for {f:?}")))?;
        let expected = FourTuple::new(
            (Ipv4Addr::from(f.dst), f.dport),
            (Ipv4Addr::from(f.src), f.sport),
        );
        prop_assert_eq!(s.tuple, expected);
        prop_assert_eq!(s.tuple.local(), (Ipv4Addr::from(f.dst), f.dport));
        prop_assert_eq!(s.tuple.remote(), (Ipv4Addr::from(f.src), f.sport));
        prop_assert_eq!(s.flags, f.flags);
        prop_assert_eq!(s.src_mac, f.src_mac);
        prop_assert_eq!((s.ip_start, s.ip_end), (ETH_HEADER, ETH_HEADER + f.ip_len()));
    }

    /// Cut anywhere: the frame is still accepted (the same) while the whole IPv4 packet is there,
    /// and `Malformed` once it is not (a truncated frame is never read past its end).
    #[test]
    fn truncated_frames(f in tcp_frame(), cut in any::<Index>()) {
        let bytes = f.bytes();
        let whole = check_parse(&bytes).unwrap();
        let cut = cut.index(bytes.len() + 1);
        let got = check_parse(&bytes[..cut]);
        if cut >= ETH_HEADER + f.ip_len() {
            let s = got.unwrap();
            prop_assert_eq!((s.tuple, s.flags, s.ip_end), (whole.tuple, whole.flags, whole.ip_end));
        } else {
            prop_assert_eq!(got.unwrap_err(), NotTcp::Malformed);
        }
    }

    /// A valid frame with a few bytes flipped (mostly in the headers): no panic, and what is still
    /// accepted is consistent with the bytes.
    #[test]
    fn mutated_frames(f in tcp_frame(), flips in flips()) {
        let mut bytes = f.bytes();
        mutate(&mut bytes, &flips);
        let _ = check_parse(&bytes);
    }

    /// What is not plain TCP/IPv4 is refused with the right reason: another EtherType, another
    /// protocol, a fragment, or lengths that do not add up.
    #[test]
    fn refusals(f in tcp_frame(), ethertype in any::<u16>(), proto in any::<u8>(), frag in 1..0x4000u16,
                version in 0..16u8, ihl in 0..16u8, total in any::<u16>()) {
        let good = f.bytes();
        let ip_total = f.ip_len();
        let ihl_ok = (20 + f.ip_options.len()) / 4;

        let mut b = good.clone();
        b[12..14].copy_from_slice(&ethertype.to_be_bytes());
        prop_assert_eq!(check_parse(&b).is_err(), ethertype != 0x0800);
        if ethertype != 0x0800 {
            prop_assert_eq!(check_parse(&b).unwrap_err(), NotTcp::NotIpv4);
        }

        let mut b = good.clone();
        b[ETH_HEADER + 9] = proto;
        if proto != 6 {
            prop_assert_eq!(check_parse(&b).unwrap_err(), NotTcp::NotTcp);
        }

        let mut b = good.clone();
        let flags_offset = u16::from_be_bytes([b[ETH_HEADER + 6], b[ETH_HEADER + 7]]) | frag;
        b[ETH_HEADER + 6..ETH_HEADER + 8].copy_from_slice(&flags_offset.to_be_bytes());
        prop_assert_eq!(check_parse(&b).unwrap_err(), NotTcp::NotTcp);

        let mut b = good.clone();
        b[ETH_HEADER] = version << 4 | ihl_ok as u8;
        if version != 4 {
            prop_assert_eq!(check_parse(&b).unwrap_err(), NotTcp::Malformed);
        }

        // Another header length: accepted only if the packet still holds both headers.
        let mut b = good.clone();
        b[ETH_HEADER] = 0x40 | ihl;
        let fits = ihl >= 5 && ip_total >= usize::from(ihl) * 4 + 20;
        prop_assert_eq!(check_parse(&b).is_ok(), fits);

        // Another total length: accepted only if it holds both headers and is all in the frame.
        let mut b = good.clone();
        b[ETH_HEADER + 2..ETH_HEADER + 4].copy_from_slice(&total.to_be_bytes());
        let total = usize::from(total);
        let fits = total >= ihl_ok * 4 + 20 && ETH_HEADER + total <= good.len();
        prop_assert_eq!(check_parse(&b).is_ok(), fits);
        if fits {
            prop_assert_eq!(check_parse(&b).unwrap().ip_end, ETH_HEADER + total);
        }
    }

    /// The Ethernet shim we write in front of outgoing packets reads back: the parser sees our MAC
    /// as the sender's, and the packet is untouched.
    #[test]
    fn eth_shim_round_trips(f in tcp_frame(), our_mac in any::<[u8; 6]>(), next_hop in any::<[u8; 6]>()) {
        let mut bytes = f.bytes();
        EthShim { our_mac, next_hop }.write(&mut bytes);
        prop_assert_eq!(&bytes[0..6], &next_hop[..]);
        let s = check_parse(&bytes).unwrap();
        prop_assert_eq!(s.src_mac, our_mac);
        prop_assert_eq!(&bytes[ETH_HEADER..], &f.bytes()[ETH_HEADER..]);
    }
}
