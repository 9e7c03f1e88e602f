//! Why a migration failed, as data a caller can match: what went wrong, and with which
//! peer.

use std::time::Duration;

/// A failed migration, from either end. `peer` is the other end's address when one was
/// involved (the destination as given to the source; the source as the receiver saw
/// it).
#[derive(Debug, thiserror::Error)]
#[error("{failure}{}", .peer.as_ref().map(|p| format!(" (peer {p})")).unwrap_or_default())]
pub struct MigrationError {
    pub peer: Option<String>,
    pub failure: MigrationFailure,
}

/// What went wrong in a migration. The text of each is one line, without the
/// "migration failed" its caller puts in front.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationFailure {
    /// The destination could not be resolved or reached.
    #[error("{reason}")]
    Connect { reason: String },
    /// The destination refused the guest before accepting it, and said why.
    #[error("the destination refused: {reason}")]
    Refused { reason: String },
    /// The destination accepted the guest, then failed to take it (a file that does not
    /// verify, a restore that fails), and said why.
    #[error("the destination failed after accepting the guest: {reason}")]
    FailedAfterAccept { reason: String },
    /// The source broke the migration off, and said why.
    #[error("the source gave up: {reason}")]
    SourceGaveUp { reason: String },
    /// The peer sent what the protocol does not allow at that point.
    #[error("{reason}")]
    Protocol { reason: String },
    /// The peer said nothing for `waited`.
    #[error("the peer {what} within {} s", .waited.as_secs())]
    TimedOut {
        what: &'static str,
        waited: Duration,
    },
    /// The connection closed or broke.
    #[error("{reason}")]
    Lost { reason: String },
    /// The guest ran to its end before it could be migrated.
    #[error("the guest finished before the migration")]
    Ended,
    /// This end failed on its own: a thread, a socket option, a local file.
    #[error("{reason}")]
    Local { reason: String },
}

impl MigrationFailure {
    /// This failure, with no peer yet.
    pub(crate) fn here(self) -> crate::SnapshotError {
        crate::SnapshotError::Migration(MigrationError {
            peer: None,
            failure: self,
        })
    }
}

/// The peer sent what the protocol does not allow here (the migration stream, or a
/// path or volume a destination was never told of).
pub(crate) fn protocol(reason: impl std::fmt::Display) -> crate::SnapshotError {
    MigrationFailure::Protocol {
        reason: reason.to_string(),
    }
    .here()
}

/// This end failed on its own: a socket option, a thread, a local file.
pub(crate) fn local(reason: impl std::fmt::Display) -> crate::SnapshotError {
    MigrationFailure::Local {
        reason: reason.to_string(),
    }
    .here()
}

impl crate::SnapshotError {
    /// Names `peer` on a migration error that names none yet.
    pub(crate) fn with_peer(self, peer: impl std::fmt::Display) -> crate::SnapshotError {
        match self {
            crate::SnapshotError::Migration(MigrationError {
                peer: None,
                failure,
            }) => crate::SnapshotError::Migration(MigrationError {
                peer: Some(peer.to_string()),
                failure,
            }),
            other => other,
        }
    }
}
