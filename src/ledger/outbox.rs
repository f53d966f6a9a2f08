//! The outbox: the decisions and outcomes a committed transaction must still publish.
//!
//! Two ways out, one order. A transaction that commits while serve's direct publisher
//! has room leases its rows to that publisher in the same statement that writes them
//! (the claimer `<instance>/direct`) and hands them over right after the commit, so a
//! decision leaves without waiting for a claim round (issue 15). Every other row (no
//! room, no broker, a CLI, or an older row of the same key still unpublished) waits for
//! `outbox_claim`. Per-agent order holds across both: a row is leased to the direct
//! publisher only when no row of its key is left in the outbox, and a claim skips every
//! row behind an older one of the same key leased to another claimer. A direct row its
//! publisher could not deliver is released for the claim round at once; one whose
//! publisher died is claimed by anyone when its lease runs out, like any lease.

use tokio::sync::mpsc;

use super::{Ledger, LedgerError, OUTBOX_LEASE_SECONDS, OutboxRow, chain};

/// Advisory-lock name that serializes outbox claims.
const OUTBOX_CLAIM_LOCK: &str = "outbox-claim";

/// Where a committed transaction hands the rows it leased to the direct publisher.
#[derive(Debug)]
pub struct OutboxHandoff {
    claimer: String,
    rows: mpsc::Sender<Vec<OutboxRow>>,
}

/// Room in the direct publisher's queue, reserved before a transaction writes its
/// outbox rows (so a row is leased only when its hand-over cannot fail for lack of room).
pub(crate) struct DirectLease<'a> {
    pub claimer: &'a str,
    permit: mpsc::Permit<'a, Vec<OutboxRow>>,
}

impl DirectLease<'_> {
    /// After the commit: the leased rows go to the publisher, in ledger order.
    pub fn hand_over(self, mut rows: Vec<OutboxRow>) {
        if rows.is_empty() {
            return;
        }
        rows.sort_by_key(|r| r.seq);
        self.permit.send(rows);
    }
}

impl Ledger {
    /// Committed outbox rows go to `rows` (leased to `claimer`) whenever it has room.
    /// The claimer must differ from this instance's name: the claim round re-claims its
    /// own leases, and would publish a handed-over row a second time.
    pub fn hand_outbox_to(
        &mut self,
        claimer: impl Into<String>,
        rows: mpsc::Sender<Vec<OutboxRow>>,
    ) {
        let claimer = claimer.into();
        assert_ne!(
            claimer, self.instance,
            "the direct claimer must not be the claim round's"
        );
        self.handoff = Some(OutboxHandoff { claimer, rows });
    }

    /// Room for one hand-over, if a direct publisher is attached and not full.
    pub(crate) fn direct_lease(&self) -> Option<DirectLease<'_>> {
        let h = self.handoff.as_ref()?;
        let permit = h.rows.try_reserve().ok()?;
        Some(DirectLease {
            claimer: &h.claimer,
            permit,
        })
    }

    /// Leases up to `limit` unpublished outbox rows (oldest first) to this instance.
    /// Rows leased by another live instance are skipped; a lease expires after
    /// `OUTBOX_LEASE_SECONDS`, so a crashed publisher's rows are published by others.
    ///
    /// Per-agent order (SPEC §15): a row is claimed only when no older row with the same
    /// key is leased to another instance, so two publishers never race on one agent's
    /// messages (decisions before their outcomes, in ledger order). Claims are
    /// serialized by an advisory lock: each sees every earlier claim committed.
    pub async fn outbox_claim(&self, limit: usize) -> Result<Vec<OutboxRow>, LedgerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(chain::lock_key(OUTBOX_CLAIM_LOCK))
            .execute(&mut *tx)
            .await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "UPDATE outbox o SET claimed_by = $2, claimed_until = now() + make_interval(secs => $3)
             FROM (SELECT id FROM outbox c
                   WHERE (claimed_until IS NULL OR claimed_until < now() OR claimed_by = $2)
                     AND NOT EXISTS (SELECT 1 FROM outbox older
                                     WHERE older.msg_key = c.msg_key AND older.id < c.id
                                       AND older.claimed_by <> $2 AND older.claimed_until >= now())
                   ORDER BY id LIMIT $1) c
             WHERE o.id = c.id
             RETURNING o.id, o.seq, o.topic, o.msg_key AS key, o.payload, o.created_at",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(&self.instance)
        .bind(OUTBOX_LEASE_SECONDS as f64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = rows;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Removes published rows from the outbox (the events keep everything).
    pub async fn outbox_mark_published(&self, ids: &[i64]) -> Result<(), LedgerError> {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives rows leased to the direct publisher `claimer` back to the claim round (their
    /// delivery failed): the next `outbox_claim` of any instance takes them, in order.
    pub async fn outbox_release(&self, claimer: &str, ids: &[i64]) -> Result<u64, LedgerError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let done = sqlx::query(
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL
             WHERE id = ANY($1) AND claimed_by = $2",
        )
        .bind(ids)
        .bind(claimer)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
