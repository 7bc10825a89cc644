//! The session state machine of PROTOCOL section 5 as one explicit transition table. A refused
//! transition changes nothing; the caller answers `INVALID_STATE`.

pub use crate::storage::SessionStatus;

use SessionStatus::*;

/// Every allowed `(from, to)` pair.
pub const TRANSITIONS: &[(SessionStatus, SessionStatus)] = &[
    (Inactive, Activating),
    (Activating, Ready),
    (Activating, Error),
    (Activating, Deactivating),
    (Ready, Running),
    (Ready, Deactivating),
    (Ready, Error),
    (Running, Ready),
    (Running, Waiting),
    (Running, Error),
    (Running, Deactivating),
    (Waiting, Running),
    (Waiting, Ready),
    (Waiting, Error),
    (Waiting, Deactivating),
    (Deactivating, Inactive),
    (Error, Deactivating),
    (Error, Activating),
];

/// Whether a session may move from `from` to `to` (PROTOCOL section 5's state machine).
pub fn allowed(from: SessionStatus, to: SessionStatus) -> bool {
    TRANSITIONS.contains(&(from, to))
}

/// The states in which an agent process exists (or is being started or stopped).
pub fn is_active(status: SessionStatus) -> bool {
    matches!(
        status,
        Activating | Ready | Running | Waiting | Deactivating
    )
}

/// A turn may start from here (activating first when needed).
pub fn accepts_turn(status: SessionStatus) -> bool {
    matches!(status, Inactive | Error | Ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_protocol() {
        // New sessions and restarts begin inactive; only activation leaves it.
        for to in SessionStatus::ALL {
            assert_eq!(
                allowed(Inactive, to),
                to == Activating,
                "inactive -> {to:?}"
            );
        }
        // Every active state can be deactivated.
        for from in [Activating, Ready, Running, Waiting] {
            assert!(allowed(from, Deactivating), "{from:?} -> deactivating");
            assert!(allowed(from, Error), "{from:?} -> error");
        }
        assert!(allowed(Error, Activating) && allowed(Error, Deactivating));
        assert!(!allowed(Error, Running));
        assert!(!allowed(Deactivating, Running));
        for status in SessionStatus::ALL {
            assert!(
                !allowed(status, status),
                "no self-transition for {status:?}"
            );
        }
    }
}
