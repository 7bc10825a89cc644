//! The write path shared by every adapter: hand the core's queued chunks for one connection to a
//! single vectored write, and report what the socket took.

use std::io::{self, IoSlice};

use diminuendo_core::{ConnectionId, Gateway};

/// Most chunks handed to one vectored write (well under every platform's IOV_MAX).
pub const MAX_SLICES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    All,
    /// The socket took less than was queued (or would block): wait until it is writable, then
    /// call `Gateway::handle_writable`.
    Blocked,
    /// The write failed; the core has been told the connection is gone.
    Failed,
}

/// Writes what the core has queued for `id` with one call of `write_vectored` (a non-blocking
/// vectored write on the adapter's socket type).
pub fn flush_connection(
    gateway: &mut Gateway,
    id: ConnectionId,
    write_vectored: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
) -> Flushed {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let filled = gateway.outbound(id, &mut slices);
    if filled == 0 {
        return Flushed::All;
    }
    let offered: usize = slices[..filled].iter().map(|slice| slice.len()).sum();
    let waiting = gateway.outbound_len(id);
    match write_vectored(&slices[..filled]) {
        Ok(written) => {
            gateway.handle_sent(id, written);
            if written < waiting {
                if written == offered {
                    // More than MAX_SLICES chunks waited; the socket may take more right away.
                    gateway.handle_writable(id);
                    return Flushed::All;
                }
                Flushed::Blocked
            } else {
                Flushed::All
            }
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Flushed::Blocked,
        Err(error) if error.kind() == io::ErrorKind::Interrupted => {
            gateway.handle_writable(id);
            Flushed::All
        }
        Err(_) => {
            gateway.handle_closed(id);
            Flushed::Failed
        }
    }
}
