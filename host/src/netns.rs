//! Entering a network namespace made with `ip netns add`.

use std::os::fd::AsRawFd;

/// Move the calling thread into network namespace `name` (`/var/run/netns/<name>`). Only the
/// network namespace changes, so bpffs mounts of the caller stay visible (unlike `ip netns exec`,
/// which also remounts /sys).
pub fn enter(name: &str) -> std::io::Result<()> {
    let path = format!("/var/run/netns/{name}");
    let ns = std::fs::File::open(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    // SAFETY: setns on an fd we own; it affects only the calling thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
