//! The frame I/O under the stack: AF_XDP rings in production, an in-memory wire in tests and
//! benchmarks. Frames are Ethernet frames; the stack never copies one inside the process: it reads
//! received frames where the link keeps them and builds outgoing frames in the link's own buffers.

use serde::Serialize;

/// Builds outgoing frames in place.
pub trait Sender {
    /// Whether one more frame can be built right now (a free TX buffer exists).
    fn can_send(&mut self) -> bool;
    /// Build one frame of `len` bytes with `build`. Only called after `can_send` said yes; if the
    /// link still has no room the frame is dropped and counted (TCP retransmits it).
    fn send(&mut self, len: usize, build: &mut dyn FnMut(&mut [u8]));
}

/// A source and sink of Ethernet frames.
pub trait Link {
    type Sender: Sender;
    /// Hand up to `max` received frames to `each` (with the sender, for replies), then give their
    /// buffers back to the receive side. Returns how many frames were handed over. A frame is
    /// lent mutably: the stack rewrites acknowledgement numbers in place (`stack/sequence.rs`).
    fn receive(&mut self, max: usize, each: &mut dyn FnMut(&mut [u8], &mut Self::Sender)) -> usize;
    fn sender(&mut self) -> &mut Self::Sender;
    /// Push built frames out (at most one syscall per batch), reap TX completions, refill RX.
    fn flush(&mut self);
    /// Wait until frames may have arrived or `timeout_ms` passed (0: do not wait).
    fn wait(&mut self, timeout_ms: i32);
    fn counters(&self) -> LinkCounters;
}

/// What the link saw, for `/stats` and benchmarks.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames built but dropped because the TX side had no room.
    pub tx_dropped: u64,
    /// Times the stack found no free TX buffer (it stops sending until the next flush).
    pub tx_ring_full: u64,
    /// Frames the kernel dropped before they reached us (AF_XDP `rx_dropped`, fill ring empty…).
    pub rx_dropped: u64,
    /// Syscalls made to kick TX or to wake RX.
    pub wakeups: u64,
}
