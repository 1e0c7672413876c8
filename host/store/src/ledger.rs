//! The service database as the core's [`Ledger`]: transactions, the
//! processed-markers and the outbox rows of the unit of work.

use crate::database::{Database, Tx};
use crate::error::StoreError;
use crate::outbox;
use std::collections::HashSet;
use switchyard_core::message::OutMessage;
use switchyard_core::work::{Ledger, LedgerError, Marker};

/// A statement's error, outage or not.
fn ledger_error(e: &StoreError) -> LedgerError {
    if e.is_outage() {
        LedgerError::Unavailable(e.to_string())
    } else {
        LedgerError::Refused(e.to_string())
    }
}

/// Beginning, committing or rolling back failed: the database or the
/// session is gone, an outage.
fn session_error(e: &sqlx::Error) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

impl Ledger for Database {
    type Tx = Tx;

    async fn begin(&self) -> Result<Tx, LedgerError> {
        Database::begin(self).await.map_err(|e| session_error(&e))
    }

    async fn mark(
        &self,
        tx: &mut Tx,
        markers: &[Marker<'_>],
    ) -> Result<HashSet<(String, String)>, LedgerError> {
        outbox::mark_many(tx, markers)
            .await
            .map_err(|e| ledger_error(&e))
    }

    async fn claim_replay(&self, tx: &mut Tx, marker: Marker<'_>) -> Result<bool, LedgerError> {
        outbox::claim_replay(tx, marker)
            .await
            .map_err(|e| ledger_error(&e))
    }

    async fn enqueue(
        &self,
        tx: &mut Tx,
        plugin: &str,
        messages: &[OutMessage],
    ) -> Result<(), LedgerError> {
        outbox::enqueue(tx, plugin, messages)
            .await
            .map_err(|e| ledger_error(&e))
    }

    async fn commit(&self, tx: Tx) -> Result<(), LedgerError> {
        tx.commit().await.map_err(|e| session_error(&e))
    }

    async fn rollback(&self, tx: Tx) -> Result<(), LedgerError> {
        tx.rollback().await.map_err(|e| session_error(&e))
    }

    async fn mark_dead_lettered(&self, marker: Marker<'_>) -> Result<(), LedgerError> {
        let mut tx = Database::begin(self).await.map_err(|e| session_error(&e))?;
        outbox::mark_processed(&mut tx, marker, "dead-lettered")
            .await
            .map_err(|e| ledger_error(&e))?;
        tx.commit().await.map_err(|e| session_error(&e))
    }
}
