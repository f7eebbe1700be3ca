//! Loss recovery: a lost push is resent by the tail-loss probe after `tail_probe` (200 ms), not
//! after smoltcp's minimum retransmission timeout of 1 s.

mod common;

use common::*;
use smoltcp::time::Duration;
use stack::StackConfig;

/// Milliseconds from a lost push until the client has it.
fn recovery_ms(tail_probe: Option<Duration>) -> (u64, stack::StackStats) {
    let server = StackConfig {
        tail_probe,
        ..server_config(8)
    };
    let mut p = Pair::new(server, client_config(8, 1));
    let (c, s) = p.establish();
    // Some traffic first, so that the probe has the peer's latest acknowledgement to repeat.
    assert_eq!(transfer(&mut p, c, s, b"hello", false, 100), b"hello");
    p.settle(100);
    assert_eq!(p.server.write(s, b"push"), 4);
    p.server.link().cut_outgoing(true);
    p.server.flush(p.now);
    p.server.link().cut_outgoing(false);
    let start = p.now;
    for _ in 0..5000 {
        p.step();
        if p.client.readable(c) >= 4 {
            return ((p.now - start).total_millis(), p.server.stats());
        }
        p.now += Duration::from_millis(1);
    }
    panic!("the push never arrived");
}

#[test]
fn a_lost_push_is_resent_by_the_tail_probe_not_after_a_second() {
    let (probed, stats) = recovery_ms(Some(Duration::from_millis(200)));
    assert!((200..400).contains(&probed), "with the probe: {probed} ms");
    assert_eq!(stats.tail_probes, 1, "{stats:?}");
    let (timed_out, stats) = recovery_ms(None);
    assert!(timed_out >= 1000, "without it, smoltcp's timeout: {timed_out} ms");
    assert_eq!(stats.tail_probes, 0);
}

/// Data that is acknowledged in time never draws a probe.
#[test]
fn acknowledged_data_draws_no_probe() {
    let mut p = Pair::new(server_config(8), client_config(8, 1));
    let (c, s) = p.establish();
    for i in 0..20u8 {
        let data = pattern(3000, i);
        assert_eq!(transfer(&mut p, c, s, &data, false, 2000), data);
        p.advance(Duration::from_millis(300));
    }
    assert_eq!(p.server.stats().tail_probes, 0, "{:?}", p.server.stats());
}
