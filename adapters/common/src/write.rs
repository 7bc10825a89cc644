//! The write path shared by every adapter, in two steps so that no gateway input is called while
//! its outputs are drained: `write_connection` hands the core's queued chunks for one connection
//! to a single vectored write and records what the socket took (it only reads the `Gateway`);
//! once every connection of the flush pass is written, `report` tells the core
//! (`handle_sent`, `handle_writable`, `handle_closed`).

use std::io::{self, IoSlice};
use std::time::Instant;

use diminuendo_core::{ConnectionId, Gateway};

/// Most chunks handed to one vectored write (well under every platform's IOV_MAX).
pub const MAX_SLICES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written (or the connection is queued again for the rest).
    All,
    /// The socket took less than was queued (or would block): wait until it is writable, then
    /// call `Gateway::handle_writable`.
    Blocked,
    /// The write failed; `report` tells the core the connection is gone.
    Failed,
}

/// What one write to a connection's socket did, for `report` after the flush pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes the socket took (`handle_sent`); `None` when the write returned an error.
    pub sent: Option<usize>,
    /// The connection goes round again at once (`handle_writable`): more chunks waited than one
    /// write takes, or the write was interrupted.
    pub again: bool,
    pub flushed: Flushed,
}

/// Writes what the core has queued for `id` with one call of `write_vectored` (a non-blocking
/// vectored write on the adapter's socket type). `None`: nothing was queued.
pub fn write_connection(
    gateway: &Gateway,
    id: ConnectionId,
    write_vectored: impl FnOnce(&[IoSlice<'_>]) -> io::Result<usize>,
) -> Option<Written> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let filled = gateway.outbound(id, &mut slices);
    if filled == 0 {
        return None;
    }
    let offered: usize = slices[..filled].iter().map(|slice| slice.len()).sum();
    let waiting = gateway.outbound_len(id);
    let written = match write_vectored(&slices[..filled]) {
        // More than MAX_SLICES chunks waited: the socket may take more right away.
        Ok(written) if written < waiting && written == offered => Written {
            sent: Some(written),
            again: true,
            flushed: Flushed::All,
        },
        Ok(written) if written < waiting => Written {
            sent: Some(written),
            again: false,
            flushed: Flushed::Blocked,
        },
        Ok(written) => Written {
            sent: Some(written),
            again: false,
            flushed: Flushed::All,
        },
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Written {
            sent: None,
            again: false,
            flushed: Flushed::Blocked,
        },
        Err(error) if error.kind() == io::ErrorKind::Interrupted => Written {
            sent: None,
            again: true,
            flushed: Flushed::All,
        },
        Err(_) => Written {
            sent: None,
            again: false,
            flushed: Flushed::Failed,
        },
    };
    Some(written)
}

/// Tells the core what one write of the flush pass did. Call once the pass is over.
pub fn report(gateway: &mut Gateway, id: ConnectionId, written: Written, now: Instant) {
    if written.flushed == Flushed::Failed {
        gateway.handle_closed(id, now);
        return;
    }
    if let Some(sent) = written.sent {
        gateway.handle_sent(id, sent, now);
    }
    if written.again {
        gateway.handle_writable(id, now);
    }
}
