//! The stack's one unsafe trick, alone here with its argument: smoltcp's `SocketSet` wants to own
//! its sockets' storage for the sockets' lifetime ('static here, since their buffers live in a
//! leaked arena), but we keep a million sockets in our own slab and let smoltcp see one at a time.
//! `in_set` builds a one-slot set over one slab entry for the duration of a closure, so smoltcp
//! works on the socket where it lies (no copy of the 360-byte socket in and out per segment).

use smoltcp::iface::{SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;

use crate::arena::Arena;
use crate::config::StackConfig;

/// One socket per buffer pair the arena gives, each in its own storage entry of the slab (on huge
/// pages if configured), and the handle a socket has in its one-slot set (the same for all).
/// `None` if the arena gave nothing.
pub(super) fn socket_slab(
    arena: &mut Arena,
    config: &StackConfig,
) -> Option<(Vec<SocketStorage<'static>>, SocketHandle)> {
    let n = config.max_conns;
    let mut sockets: Vec<SocketStorage<'static>> = Vec::with_capacity(n);
    if config.huge_pages {
        crate::stats::advise_huge_pages(
            sockets.as_ptr() as *const u8,
            n * std::mem::size_of::<SocketStorage<'static>>(),
        );
    }
    let mut handle = None;
    while let Some((rx, tx)) = arena.carve() {
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        // Give up on a peer that stops acknowledging: no socket retransmits forever.
        s.set_timeout(Some(config.tcp_timeout));
        s.set_keep_alive(config.keep_alive);
        // No delayed-ACK timer: the ACK goes out at the next flush, which comes right after the
        // application has had the chance to answer (and so piggyback it).
        s.set_ack_delay(None);
        // Push frames are small and latency matters more than packet count.
        s.set_nagle_enabled(false);
        sockets.push(SocketStorage::EMPTY);
        let slot = sockets.last_mut()?;
        // SAFETY: the closure only adds the socket and returns its handle.
        handle = Some(unsafe { in_set(slot, |set| set.add(s)) });
    }
    Some((sockets, handle?))
}

/// Let smoltcp work on one socket in place: a one-slot `SocketSet` over its storage.
///
/// # Safety
/// `f` must not keep the set (swap it out, store it) nor remove the socket from it: the set's
/// type claims a 'static borrow of `slot`, which is only true for the duration of this call.
pub(super) unsafe fn in_set<R>(slot: &mut SocketStorage<'static>, f: impl FnOnce(&mut SocketSet<'static>) -> R) -> R {
    // SAFETY: `SocketSet<'a>` wants its storage borrowed for as long as the sockets' own
    // lifetime, 'static here (their buffers are in the leaked arena). The set made over `slot`
    // is only lent to `f` and dropped before we return, so that 'static borrow of one slot never
    // outlives the real borrow `slot`, and nothing else reaches the slot meanwhile.
    let one: &'static mut [SocketStorage<'static>] = unsafe { std::slice::from_raw_parts_mut(slot as *mut _, 1) };
    let mut set = SocketSet::new(one);
    f(&mut set)
}

/// The TCP socket that lives in `slot`, for as long as `slot` is borrowed.
pub(super) fn sock_mut<'a>(slot: &'a mut SocketStorage<'static>, handle: SocketHandle) -> &'a mut tcp::Socket<'static> {
    // SAFETY: the closure only takes the socket's address.
    let ptr: *mut tcp::Socket<'static> =
        unsafe { in_set(slot, |set| set.get_mut::<tcp::Socket<'static>>(handle) as *mut _) };
    // SAFETY: the socket is stored inside `slot` itself (the set only borrowed that slot), so
    // the pointer stays valid, and exclusive, for the borrow of `slot` the result is tied to.
    unsafe { &mut *ptr }
}

#[cfg(test)]
mod tests {
    //! The trick under test: many sockets in one slab, each reached through its own one-slot set.
    //! Run under AddressSanitizer or valgrind (see ARCHITECTURE.md), these also check that no
    //! access strays outside the slot it was given.

    use smoltcp::iface::SocketStorage;
    use smoltcp::socket::tcp;
    use smoltcp::wire::IpListenEndpoint;

    use super::{in_set, sock_mut};

    /// A socket with leaked buffers of its own (the stack's come from the arena).
    fn socket(rx: usize) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(Box::leak(vec![0u8; rx].into_boxed_slice()));
        let tx = tcp::SocketBuffer::new(Box::leak(vec![0u8; 64].into_boxed_slice()));
        tcp::Socket::new(rx, tx)
    }

    #[test]
    fn each_slot_is_reached_alone_and_in_place() {
        let mut slab: Vec<SocketStorage<'static>> = (0..8).map(|_| SocketStorage::EMPTY).collect();
        let mut handles = Vec::new();
        for (i, slot) in slab.iter_mut().enumerate() {
            // SAFETY: the closure only adds the socket and returns its handle.
            handles.push(unsafe { in_set(slot, |set| set.add(socket(100 + i))) });
        }
        assert!(
            handles.windows(2).all(|w| w[0] == w[1]),
            "one handle for every one-slot set"
        );
        let handle = handles[0];
        let before: Vec<*const u8> = slab.iter().map(|s| s as *const _ as *const u8).collect();
        for (i, slot) in slab.iter_mut().enumerate() {
            let sock = sock_mut(slot, handle);
            assert_eq!(sock.recv_capacity(), 100 + i, "slot {i} holds its own socket");
            if i % 2 == 0 {
                sock.listen(IpListenEndpoint {
                    addr: None,
                    port: 8000 + i as u16,
                })
                .unwrap();
            }
        }
        for (i, slot) in slab.iter_mut().enumerate() {
            let sock = sock_mut(slot, handle);
            let want = if i % 2 == 0 {
                tcp::State::Listen
            } else {
                tcp::State::Closed
            };
            assert_eq!(sock.state(), want, "slot {i}: a change to one socket reached no other");
            sock.abort();
        }
        let after: Vec<*const u8> = slab.iter().map(|s| s as *const _ as *const u8).collect();
        assert_eq!(before, after, "the sockets never moved");
    }
}
