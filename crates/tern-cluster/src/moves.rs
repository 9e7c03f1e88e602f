//! Moves as records: every move of an app (a live migration asked for by `tern
//! migrate`, a drain's, or a restart elsewhere after its node was lost) is a
//! [`MoveRecord`] in the `tern-moves` bucket, keyed by the app, that the control
//! plane's reconciler drives one step at a time, writing each step with
//! compare-and-set. No move lives in a request or in a task's memory: a control plane
//! that dies mid-move leaves the record where it stood, and the next one carries on
//! from there.
//!
//! A move is fenced by the app's incarnation: it moves incarnation `incarnation` and
//! nothing else; if the app was placed again meanwhile, the move fails and changes
//! nothing.
//!
//! ```text
//! asked ──► ready (the destination listens) ──► switched (the destination runs it) ──► done
//!   │            │                                                                     
//!   └────────────┴──► failed (the app stays where it was)
//! ```
//! A restart (not live) goes from `asked` straight to `done`.

use async_nats::jetstream::kv;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::backbone::{Backbone, BackboneError, js_err};
use crate::protocol::{MOVES, Moved};

/// Where a move stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum MoveState {
    /// Asked for; nothing done yet.
    Asked,
    /// The destination runs an instance that listens at `addr` for the migration.
    Ready {
        addr: String,
    },
    /// The destination confirmed: it runs the app now. Only the app's record is left
    /// to change.
    Switched,
    Done,
    Failed,
}

impl MoveState {
    pub fn name(&self) -> &'static str {
        match self {
            MoveState::Asked => "asked",
            MoveState::Ready { .. } => "copying",
            MoveState::Switched => "switched",
            MoveState::Done => "done",
            MoveState::Failed => "failed",
        }
    }

    /// Done or failed: nothing more happens to it.
    pub fn is_over(&self) -> bool {
        matches!(self, MoveState::Done | MoveState::Failed)
    }
}

/// One move of one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRecord {
    /// `APP#N`: the N-th move of the app.
    pub id: String,
    pub app: String,
    /// The incarnation it moves: the move fails if the app is placed again first.
    pub incarnation: u64,
    pub from: String,
    /// The destination; `None` until the reconciler chooses one (drains, restarts).
    pub to: Option<String>,
    /// A live migration; otherwise a restart elsewhere (from the app's last
    /// checkpoint when it is migratable).
    pub live: bool,
    /// Who asked, for notes: `tern migrate`, `drain cloud`, `node edge is lost`.
    pub why: String,
    #[serde(flatten)]
    pub state: MoveState,
    /// What happened, in one line (why it failed, what the migration measured).
    #[serde(default)]
    pub note: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Moved>,
    /// The source's last checkpoint when the migration began: the newest state that
    /// exists elsewhere should the destination die before its own first checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<crate::apps::CheckpointRef>,
    pub asked_ms: u64,
    pub updated_ms: u64,
}

impl MoveRecord {
    /// A move of `record`'s app (its current incarnation) off node `from`, asked now
    /// for `why`; its id is given when it is stored ([`Backbone::ask_move`]).
    pub fn asked(
        record: &crate::apps::AppRecord,
        from: &str,
        to: Option<String>,
        live: bool,
        why: String,
    ) -> MoveRecord {
        let now = crate::apps::now_ms();
        MoveRecord {
            id: String::new(),
            app: record.name.clone(),
            incarnation: record.incarnation,
            from: from.to_owned(),
            to,
            live,
            why,
            state: MoveState::Asked,
            note: String::new(),
            stats: None,
            checkpoint: None,
            asked_ms: now,
            updated_ms: now,
        }
    }

    /// The move's number in its app's id.
    fn number(&self) -> u64 {
        self.id
            .rsplit_once('#')
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0)
    }
}

pub(crate) async fn open(
    js: &async_nats::jetstream::Context,
    make: bool,
) -> Result<kv::Store, BackboneError> {
    crate::backbone::bucket(
        js,
        make,
        kv::Config {
            bucket: MOVES.into(),
            description: "Tern moves: each app's latest move and where it stands".into(),
            history: 5,
            ..Default::default()
        },
    )
    .await
}

/// Why a move could not be asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    #[error("{app} is being moved already ({id}, {state}); wait for it, or see `tern ps`")]
    Busy {
        app: String,
        id: String,
        state: &'static str,
    },
    #[error(transparent)]
    Backbone(#[from] BackboneError),
}

impl Backbone {
    /// Records a new move of `mv.app` (its `id` is given here), unless one is under way
    /// already; returns it as stored.
    ///
    /// # Errors
    /// [`AskError::Busy`] when the app is being moved, or the backbone's.
    pub async fn ask_move(&self, mut mv: MoveRecord) -> Result<(MoveRecord, u64), AskError> {
        for _ in 0..5 {
            let current = self.move_of(&mv.app).await?;
            if let Some((old, _)) = &current
                && !old.state.is_over()
            {
                return Err(AskError::Busy {
                    app: old.app.clone(),
                    id: old.id.clone(),
                    state: old.state.name(),
                });
            }
            let number = current.as_ref().map_or(0, |(m, _)| m.number()) + 1;
            mv.id = format!("{}#{number}", mv.app);
            let rev = current.map_or(0, |(_, r)| r);
            if let Some(rev) = self.put_move(&mv, rev).await? {
                return Ok((mv, rev));
            }
        }
        Err(AskError::Backbone(js_err(
            "store move",
            "it kept changing under this writer",
        )))
    }

    /// App `app`'s latest move and its revision.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`], or [`BackboneError::BadEntry`].
    pub async fn move_of(&self, app: &str) -> Result<Option<(MoveRecord, u64)>, BackboneError> {
        let entry = self
            .moves
            .entry(app)
            .await
            .map_err(|e| js_err("read move", e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((crate::apps::decode(&e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `mv` if its app's entry is still at `revision` (0: absent); `None` when
    /// someone wrote first.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn put_move(
        &self,
        mv: &MoveRecord,
        revision: u64,
    ) -> Result<Option<u64>, BackboneError> {
        let json = serde_json::to_vec(mv).map_err(|e| js_err("encode move", e))?;
        crate::backbone::compare_and_set(&self.moves, &mv.app, json, revision, "store move").await
    }

    /// Forgets app `app`'s moves (the app was removed).
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn forget_moves(&self, app: &str) -> Result<(), BackboneError> {
        self.moves
            .purge(app)
            .await
            .map_err(|e| js_err("forget moves", e))
    }

    /// Every app's latest move, as they are and then as they change, with revisions.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn watch_moves(
        &self,
    ) -> Result<
        impl futures_util::Stream<Item = Result<(MoveRecord, u64), BackboneError>> + use<>,
        BackboneError,
    > {
        let puts = crate::backbone::watch_puts(&self.moves, "watch moves").await?;
        Ok(puts.map(|entry| {
            let entry = entry?;
            Ok((crate::apps::decode(&entry.value)?, entry.revision))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_reads_as_it_was_written_and_numbers_itself() {
        let mv = MoveRecord {
            id: "agg#12".into(),
            app: "agg".into(),
            incarnation: 3,
            from: "edge".into(),
            to: Some("cloud".into()),
            live: true,
            why: "tern migrate".into(),
            state: MoveState::Ready {
                addr: "127.0.0.1:4000".into(),
            },
            note: String::new(),
            stats: None,
            checkpoint: None,
            asked_ms: 1,
            updated_ms: 2,
        };
        let json = serde_json::to_string(&mv).expect("json");
        assert!(
            json.contains(r#""state":"ready","addr":"127.0.0.1:4000""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<MoveRecord>(&json).expect("read"), mv);
        assert_eq!(mv.number(), 12);
        assert_eq!(mv.state.name(), "copying");
        assert!(!mv.state.is_over() && MoveState::Failed.is_over());
    }
}
