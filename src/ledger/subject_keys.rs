//! The `subject_key` table: every per-subject key goes in wrapped and comes out
//! unwrapped through a [`KeyWrap`] (SPEC §14 "Keys apart from data"); nothing else in
//! the ledger reads or writes its key columns.
//!
//! ```text
//! for_subjects(conn, kw, subjects)   // deciding: each subject's key, created when missing
//! by_key_id(pool, kw, key_id)        // opening one intent's personal data
//! all(conn, kw)                      // replay: every key (unopened without a KEK)
//! wrap_legacy(ledger, kw)            // at connect: keys stored in clear before wrapping
//! ledger.rewrap_subject_keys(..)     // `privacy rotate-kek`
//! ```

use super::chain::GLOBAL_CHAIN;
use super::events::{self, LedgerEvent};
use super::machine::{Projections, Staged};
use super::store::{self, WriteSet};
use super::{Ledger, LedgerError, Origin};
use crate::keywrap::{KeyWrap, KeyWrapError, Wrapped};
use crate::privacy::SubjectKey;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;

/// Keys re-wrapped per transaction (and per `subject_keys_rewrapped` event): bounds the
/// locks held and the event's size.
pub const REWRAP_BATCH: usize = 500;
/// `fromKekIds` entry of keys that were stored in clear.
pub const CLEAR: &str = "clear";

#[derive(sqlx::FromRow)]
struct Row {
    subject_id: String,
    key_id: uuid::Uuid,
    wrapped_key: Option<Vec<u8>>,
    kek_id: Option<String>,
    legacy_key: Option<Vec<u8>>,
}

const ROW_COLUMNS: &str = "subject_id, key_id, wrapped_key, kek_id, legacy_key";

impl Row {
    fn unwrap(&self, kw: &dyn KeyWrap) -> Result<SubjectKey, KeyWrapError> {
        match (&self.wrapped_key, &self.kek_id) {
            (Some(bytes), Some(kek_id)) => kw.unwrap(
                &self.subject_id,
                self.key_id,
                &Wrapped {
                    kek_id: kek_id.clone(),
                    bytes: bytes.clone(),
                },
            ),
            _ => Err(KeyWrapError::Legacy {
                key_id: self.key_id,
            }),
        }
    }

    /// The clear key, from the legacy column or by unwrapping with `from`.
    fn open(&self, from: &dyn KeyWrap) -> Result<SubjectKey, LedgerError> {
        match &self.legacy_key {
            Some(clear) => SubjectKey::from_bytes(self.key_id, clear).ok_or_else(|| {
                LedgerError::Corrupt(format!(
                    "the clear (legacy) subject key {} is not 32 bytes",
                    self.key_id
                ))
            }),
            None => Ok(self.unwrap(from)?),
        }
    }
}

/// The current key of each subject, created (and stored wrapped) when missing.
pub(crate) async fn for_subjects(
    conn: &mut PgConnection,
    kw: Option<&dyn KeyWrap>,
    subjects: &[String],
) -> Result<HashMap<String, SubjectKey>, LedgerError> {
    let kw = kw.ok_or(KeyWrapError::NotConfigured)?;
    let fresh: Vec<SubjectKey> = subjects.iter().map(|_| SubjectKey::generate()).collect();
    let wrapped = subjects
        .iter()
        .zip(&fresh)
        .map(|(s, k)| kw.wrap(s, k).map(|w| w.bytes))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO subject_key (subject_id, key_id, wrapped_key, kek_id)
         SELECT s, k, w, $4 FROM unnest($1::text[], $2::uuid[], $3::bytea[]) AS u(s, k, w)
         ON CONFLICT (subject_id) DO NOTHING",
    )
    .bind(subjects)
    .bind(fresh.iter().map(|k| k.key_id).collect::<Vec<_>>())
    .bind(&wrapped)
    .bind(kw.kek_id())
    .execute(&mut *conn)
    .await?;
    // A new statement: sees rows another transaction committed while we waited on them.
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ROW_COLUMNS} FROM subject_key WHERE subject_id = ANY($1)"
    )))
    .bind(subjects)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let key = row.unwrap(kw)?;
        out.insert(row.subject_id, key);
    }
    Ok(out)
}

/// The key `key_id`, unwrapped; `None` once erased. A key that exists needs the KEK.
pub(crate) async fn by_key_id(
    pool: &PgPool,
    kw: Option<&dyn KeyWrap>,
    key_id: uuid::Uuid,
) -> Result<Option<SubjectKey>, LedgerError> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ROW_COLUMNS} FROM subject_key WHERE key_id = $1"
    )))
    .bind(key_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let kw = kw.ok_or(KeyWrapError::NotConfigured)?;
    Ok(Some(row.unwrap(kw)?))
}

/// Every existing key by key id: unwrapped with a KEK, `None` (exists, not opened)
/// without one. A key the given KEK cannot unwrap is an error: replaying with the wrong
/// KEK must not pass for "erased".
pub(crate) async fn all(
    conn: &mut PgConnection,
    kw: Option<&dyn KeyWrap>,
) -> Result<HashMap<uuid::Uuid, Option<SubjectKey>>, LedgerError> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ROW_COLUMNS} FROM subject_key"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let key = match kw {
            Some(kw) => Some(row.unwrap(kw)?),
            None => None,
        };
        out.insert(row.key_id, key);
    }
    Ok(out)
}

/// Wraps the keys still stored in clear (written before keys were wrapped) under `kw`:
/// run whenever a ledger is opened with a KEK, so that the first start after the
/// upgrade leaves no clear key behind. Cheap when there is none (a partial index).
pub(crate) async fn wrap_legacy(ledger: &Ledger, kw: &dyn KeyWrap) -> Result<(), LedgerError> {
    let any: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM subject_key WHERE legacy_key IS NOT NULL)",
    )
    .fetch_one(&ledger.pool)
    .await?;
    if !any {
        return Ok(());
    }
    let actor = format!("spendguard:{}", ledger.instance);
    let done = rewrap(
        ledger,
        kw,
        kw,
        true,
        REWRAP_BATCH,
        &actor,
        &Origin::cli(&ledger.instance),
    )
    .await?;
    tracing::info!(
        keys = done.keys,
        kek_id = kw.kek_id(),
        "subject keys stored in clear were wrapped"
    );
    Ok(())
}

/// What a re-wrap did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapSummary {
    /// Keys wrapped anew (legacy clear keys included).
    pub keys: usize,
    /// Transactions (each recorded as one `subject_keys_rewrapped` event).
    pub batches: usize,
    /// The ledger seq of each batch's event.
    pub seqs: Vec<i64>,
    /// Keys still not wrapped by the target KEK when it finished (written meanwhile by
    /// an instance whose current KEK is another one): run it again once every instance
    /// wraps with the new KEK.
    pub remaining: i64,
}

impl Ledger {
    /// `spendguard privacy rotate-kek`: re-wraps every subject key not yet wrapped by
    /// `to` (unwrapping with `from`, or taking a legacy clear key), `batch` keys per
    /// transaction, each batch recorded as a `subject_keys_rewrapped` event. Interrupted,
    /// it is run again: rows already under `to` are skipped.
    pub async fn rewrap_subject_keys(
        &self,
        from: &dyn KeyWrap,
        to: &dyn KeyWrap,
        batch: usize,
        actor: &str,
        origin: &Origin,
    ) -> Result<RewrapSummary, LedgerError> {
        rewrap(self, from, to, false, batch, actor, origin).await
    }
}

async fn rewrap(
    ledger: &Ledger,
    from: &dyn KeyWrap,
    to: &dyn KeyWrap,
    legacy_only: bool,
    batch: usize,
    actor: &str,
    origin: &Origin,
) -> Result<RewrapSummary, LedgerError> {
    let batch = i64::try_from(batch.clamp(1, 10 * REWRAP_BATCH)).unwrap_or(REWRAP_BATCH as i64);
    let mut summary = RewrapSummary::default();
    // Keyset pagination over the primary key: each row is visited once, so the whole
    // pass is linear however many rows were already under `to`.
    let mut after: Option<String> = None;
    loop {
        let mut tx = ledger.pool.begin().await?;
        let chains = vec![GLOBAL_CHAIN.to_string()];
        let now = store::lock_chains(&mut tx, &chains, None, false).await?;
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM subject_key
             WHERE ($1::text IS NULL OR subject_id > $1)
               AND kek_id IS DISTINCT FROM $2
               AND ($3 = false OR legacy_key IS NOT NULL)
             ORDER BY subject_id LIMIT $4 FOR UPDATE"
        )))
        .bind(&after)
        .bind(to.kek_id())
        .bind(legacy_only)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            tx.commit().await?;
            break;
        };
        after = Some(last.subject_id.clone());
        let mut subjects = Vec::with_capacity(rows.len());
        let mut wrapped = Vec::with_capacity(rows.len());
        let mut from_ids: Vec<String> = Vec::new();
        for row in &rows {
            let key = row.open(from)?;
            wrapped.push(to.wrap(&row.subject_id, &key)?.bytes);
            subjects.push(row.subject_id.clone());
            from_ids.push(row.kek_id.clone().unwrap_or_else(|| CLEAR.to_string()));
        }
        from_ids.sort();
        from_ids.dedup();
        sqlx::query(
            "UPDATE subject_key s SET wrapped_key = u.w, kek_id = $3, legacy_key = NULL
             FROM unnest($1::text[], $2::bytea[]) AS u(subject_id, w)
             WHERE s.subject_id = u.subject_id",
        )
        .bind(&subjects)
        .bind(&wrapped)
        .bind(to.kek_id())
        .execute(&mut *tx)
        .await?;
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        ws.reserve_seqs(&mut tx, 1).await?;
        let staged = Staged {
            chain_id: GLOBAL_CHAIN.to_string(),
            actor: actor.to_string(),
            resource: format!("kek:{}", to.kek_id()),
            event: LedgerEvent::SubjectKeysRewrapped(events::SubjectKeysRewrapped {
                from_kek_ids: from_ids,
                to_kek_id: to.kek_id().to_string(),
                key_ids: rows.iter().map(|r| r.key_id).collect(),
                actor: actor.to_string(),
            }),
        };
        let seq = ws
            .record(&mut Projections::default(), &staged, now, origin)?
            .recorded
            .seq;
        ws.flush(&mut tx).await?;
        tx.commit().await?;
        summary.keys += rows.len();
        summary.batches += 1;
        summary.seqs.push(seq);
    }
    summary.remaining = sqlx::query_scalar(
        "SELECT count(*) FROM subject_key WHERE kek_id IS DISTINCT FROM $1 AND ($2 = false OR legacy_key IS NOT NULL)",
    )
    .bind(to.kek_id())
    .bind(legacy_only)
    .fetch_one(&ledger.pool)
    .await?;
    Ok(summary)
}
