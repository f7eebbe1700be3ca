//! The XDP steering program and its loader.
//!
//! `src/bpf/steer.bpf.c` sends TCP segments for the configured endpoints to the AF_XDP socket of
//! the queue they arrived on and passes everything else to the kernel. [`Steering`] loads it
//! (printing the verifier log if the kernel refuses it), attaches it, registers sockets, sets the
//! endpoints and reads the counters; the `xdp-steer` CLI and `testbed/attach.sh` are built on it.

mod skel {
    #![allow(clippy::all, missing_docs, unused_imports)]
    include!(concat!(env!("OUT_DIR"), "/steer.skel.rs"));
}

pub mod area;
pub mod maps;
pub mod netns;
mod steering;
pub mod testbed;
pub mod xsk;

pub use maps::Counters;
pub use steering::{
    attached_program, detach_left_over, find_pin, ifindex, is_root, Attached, Mode, SteerError, Steering, XskMap,
    PROGRAM_NAME,
};
