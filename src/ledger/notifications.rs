//! The webhook delivery queue (SPEC §13.2) and the notifier's cursor in the ledger.
//!
//! Deliveries are enqueued from committed events, never by the deciding transaction: a
//! notifier reads events after a cursor kept in PostgreSQL (gap-safe order, as
//! `replay::events_after`), turns them into the messages they published (the same fold
//! as replay), inserts one delivery per subscribed webhook and moves the cursor, all in
//! one transaction. A restart resumes at the cursor; deciding never waits on any of it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::events::{LedgerEvent, kind};
use super::machine::{self, Change};
use super::replay::{EVENT_COLUMNS, row_to_event};
use super::{Ledger, LedgerError, chain};
use crate::notify::{self, EventKind};

/// Advisory lock that lets one instance at a time move the cursor (others skip a round).
const CURSOR_LOCK: &str = "notification-cursor";
/// Most rows `notification_deliveries` lists.
pub const MAX_LISTED_DELIVERIES: i64 = 500;

/// Event types that can notify anything.
const NOTIFYING_TYPES: [&str; 6] = [
    kind::INTENT_DECIDED,
    kind::INTENT_CLOSED,
    kind::SETTLEMENT_APPLIED,
    kind::AUTHORIZATION_EXPIRED,
    kind::KILL_SWITCH_SET,
    kind::SETTLEMENT_REFUSED,
];

/// A webhook as the queue sees it: its id and what it subscribed to.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub webhook_id: String,
    pub kinds: Vec<EventKind>,
}

/// What one enqueue round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub events: usize,
    pub deliveries: usize,
}

/// A delivery claimed for sending.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: uuid::Uuid,
    pub webhook_id: String,
    pub event_kind: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// A delivery as `GET /v1/notifications` shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: String,
    pub event: String,
    pub ledger_seq: i64,
    /// `pending` (will be tried again), `delivered` or `failed` (gave up).
    pub state: String,
    pub attempts: i32,
    #[schemars(with = "Option<String>")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// HTTP status of the last answer, if the receiver answered at all.
    pub last_status: Option<i32>,
    #[schemars(with = "Option<String>")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[schemars(with = "Option<String>")]
    pub failed_at: Option<DateTime<Utc>>,
    #[schemars(with = "String")]
    pub created_at: DateTime<Utc>,
}

/// The notifications one event gives: (kind, masked message text).
pub fn notifications_of(
    event_type: &str,
    payload: &str,
    recorded: &super::chain::EventRow,
) -> Vec<(EventKind, String)> {
    let mut out = Vec::new();
    if event_type == kind::SETTLEMENT_REFUSED {
        // Its audit payload, masked when it was written.
        out.push((EventKind::SettlementRefused, payload.to_string()));
        return out;
    }
    let event = match LedgerEvent::parse(event_type, payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(seq = recorded.seq, error = %e, "event does not parse; no notification for it");
            return out;
        }
    };
    let r = machine::Recorded {
        seq: recorded.seq,
        hash: recorded.hash,
        recorded_at: recorded.recorded_at,
    };
    let folded = machine::delta(&r, &event, &mut |c| match c {
        Change::Decision { row, .. } => {
            if row.effect == "REQUIRE_HITL" || row.effect == "REQUIRE_MSIG" {
                out.push((EventKind::ApprovalRequested, row.message.clone()));
            }
            out.push((EventKind::Decision, row.message));
        }
        Change::Outcome { row, .. } => out.push((EventKind::Outcome, row.message)),
        Change::Lifecycle { text, .. } => out.push((EventKind::Outcome, text)),
        Change::Kill(k) => out.push((
            EventKind::KillSwitch,
            serde_json::json!({
                "scope": k.scope,
                "active": k.active,
                "actor": k.actor,
                "reason": k.reason,
                "changedAt": k.changed_at,
                "ledgerSeq": k.seq,
            })
            .to_string(),
        )),
        _ => {}
    });
    if let Err(e) = folded {
        tracing::warn!(seq = recorded.seq, error = %e, "event does not fold; no notification for it");
        out.clear();
    }
    for (_, text) in &mut out {
        crate::privacy::mask_json_in_place(text);
    }
    out
}

impl Ledger {
    /// Puts the cursor at the end of the committed ledger if there is none yet: webhooks
    /// announce what happens from their first start on, not the ledger's history.
    pub async fn notifications_init_cursor(&self) -> Result<(), LedgerError> {
        sqlx::query(
            "INSERT INTO notification_cursor (id, xid, seq)
             SELECT 1, coalesce(max(xid::text::bigint), 0), coalesce(max(seq), 0)
               FROM (SELECT xid, seq FROM ledger_event
                      WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
                      ORDER BY xid DESC, seq DESC LIMIT 1) last
             ON CONFLICT (id) DO NOTHING",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Reads up to `limit` notifying events after the cursor, enqueues their deliveries
    /// and moves the cursor past them, in one transaction. Another instance holding the
    /// cursor makes this a no-op round.
    pub async fn notifications_enqueue(
        &self,
        subscriptions: &[Subscription],
        limit: i64,
    ) -> Result<Enqueued, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(chain::lock_key(CURSOR_LOCK))
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(Enqueued::default());
        }
        let cursor: Option<(i64, i64)> =
            sqlx::query_as("SELECT xid, seq FROM notification_cursor WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        let Some((xid, seq)) = cursor else {
            return Ok(Enqueued::default());
        };
        // `xid >= $1` lets the xid index narrow the scan; the row comparison is the order.
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, xid::text::bigint AS xid_n FROM ledger_event
             WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
               AND xid >= $1::text::xid8
               AND (xid, seq) > ($1::text::xid8, $2)
               AND event_type = ANY($4)
             ORDER BY xid, seq LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(xid.to_string())
            .bind(seq)
            .bind(limit)
            .bind(&NOTIFYING_TYPES[..])
            .fetch_all(&mut *tx)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(Enqueued::default());
        };
        let last: (i64, i64) = (last.try_get("xid_n")?, last.try_get("seq")?);

        let mut ids = Vec::new();
        let mut hooks = Vec::new();
        let mut kinds = Vec::new();
        let mut seqs = Vec::new();
        let mut payloads = Vec::new();
        for r in &rows {
            let e = row_to_event(r)?;
            for (k, data) in notifications_of(&e.event_type, &e.payload, &e) {
                for s in subscriptions.iter().filter(|s| s.kinds.contains(&k)) {
                    let id = uuid::Uuid::now_v7();
                    payloads.push(notify::body(&id, k, e.seq, e.recorded_at, &data));
                    ids.push(id);
                    hooks.push(s.webhook_id.clone());
                    kinds.push(k.as_str());
                    seqs.push(e.seq);
                }
            }
        }
        let inserted = if ids.is_empty() {
            0
        } else {
            sqlx::query(
                "INSERT INTO notification_delivery (id, webhook_id, event_kind, event_seq, payload)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[])
                 ON CONFLICT (webhook_id, event_kind, event_seq) DO NOTHING",
            )
            .bind(&ids)
            .bind(&hooks)
            .bind(&kinds)
            .bind(&seqs)
            .bind(&payloads)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        sqlx::query(
            "UPDATE notification_cursor SET xid = $1, seq = $2, moved_at = now() WHERE id = 1",
        )
        .bind(last.0)
        .bind(last.1)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Enqueued {
            events: rows.len(),
            deliveries: usize::try_from(inserted).unwrap_or(0),
        })
    }

    /// Leases up to `limit` due deliveries of the given webhooks for `lease_s` seconds
    /// (oldest due first). Deliveries of webhooks no longer configured stay pending.
    pub async fn notifications_claim(
        &self,
        webhook_ids: &[String],
        limit: i64,
        lease_s: f64,
    ) -> Result<Vec<ClaimedDelivery>, LedgerError> {
        let rows = sqlx::query(
            "UPDATE notification_delivery d SET next_attempt_at = now() + make_interval(secs => $3)
             FROM (SELECT id FROM notification_delivery
                    WHERE delivered_at IS NULL AND failed_at IS NULL
                      AND next_attempt_at <= now() AND webhook_id = ANY($1)
                    ORDER BY next_attempt_at LIMIT $2
                    FOR UPDATE SKIP LOCKED) c
             WHERE d.id = c.id
             RETURNING d.id, d.webhook_id, d.event_kind, d.payload, d.attempts",
        )
        .bind(webhook_ids)
        .bind(limit)
        .bind(lease_s)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedDelivery {
                    id: r.try_get("id")?,
                    webhook_id: r.try_get("webhook_id")?,
                    event_kind: r.try_get("event_kind")?,
                    payload: r.try_get("payload")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Records the 2xx answers of one sending round, `(delivery id, status)`, in one
    /// statement: one commit per round instead of one per delivery (at 1,000 decisions/s
    /// with a `decision` webhook that was 1,000 commits/s beside the deciders').
    pub async fn notifications_delivered(
        &self,
        delivered: &[(uuid::Uuid, i32)],
    ) -> Result<(), LedgerError> {
        if delivered.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE notification_delivery d SET attempts = attempts + 1, delivered_at = now(),
                    last_status = a.status, last_error = NULL
               FROM unnest($1::uuid[], $2::int[]) AS a(id, status)
              WHERE d.id = a.id AND d.delivered_at IS NULL",
        )
        .bind(delivered.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(delivered.iter().map(|(_, s)| *s).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed attempt: retried after `retry_in_ms`, or marked failed once it
    /// has had `max_attempts`. Answers whether it gave up.
    pub async fn notification_attempt_failed(
        &self,
        id: uuid::Uuid,
        error: &str,
        status: Option<i32>,
        retry_in_ms: i64,
        max_attempts: i32,
    ) -> Result<bool, LedgerError> {
        let mut error = error.to_string();
        crate::privacy::mask_in_place(&mut error);
        let cut = error
            .char_indices()
            .nth(500)
            .map_or(error.len(), |(i, _)| i);
        error.truncate(cut);
        let gave_up: Option<bool> = sqlx::query_scalar(
            "UPDATE notification_delivery SET attempts = attempts + 1, last_error = $2, last_status = $3,
                    next_attempt_at = now() + make_interval(secs => $4),
                    failed_at = CASE WHEN attempts + 1 >= $5 THEN now() END
              WHERE id = $1 AND delivered_at IS NULL
              RETURNING failed_at IS NOT NULL",
        )
        .bind(id)
        .bind(error.replace('\0', "\u{FFFD}"))
        .bind(status)
        .bind(retry_in_ms as f64 / 1000.0)
        .bind(max_attempts)
        .fetch_optional(&self.pool)
        .await?;
        Ok(gave_up.unwrap_or(false))
    }

    /// Deliveries neither delivered nor given up.
    pub async fn notification_backlog(&self) -> Result<i64, LedgerError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM notification_delivery WHERE delivered_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Deletes up to `limit` delivered or failed rows older than `days`, so the queue
    /// does not grow for ever (the ledger keeps the events themselves).
    pub async fn notifications_prune(&self, days: i32, limit: i64) -> Result<u64, LedgerError> {
        Ok(sqlx::query(
            "DELETE FROM notification_delivery WHERE id IN (
                SELECT id FROM notification_delivery
                 WHERE (delivered_at IS NOT NULL OR failed_at IS NOT NULL)
                   AND created_at < now() - make_interval(days => $1)
                 LIMIT $2)",
        )
        .bind(days)
        .bind(limit)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// The most recent deliveries, newest first; `state` filters by
    /// `pending` / `delivered` / `failed`.
    pub async fn notification_deliveries(
        &self,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryView>, LedgerError> {
        let rows = sqlx::query(
            "SELECT id, webhook_id, event_kind, event_seq, attempts, next_attempt_at, last_error,
                    last_status, delivered_at, failed_at, created_at,
                    CASE WHEN delivered_at IS NOT NULL THEN 'delivered'
                         WHEN failed_at IS NOT NULL THEN 'failed' ELSE 'pending' END AS state
               FROM notification_delivery
              WHERE $1::text IS NULL
                 OR ($1 = 'delivered' AND delivered_at IS NOT NULL)
                 OR ($1 = 'failed' AND failed_at IS NOT NULL)
                 OR ($1 = 'pending' AND delivered_at IS NULL AND failed_at IS NULL)
              ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(state)
        .bind(limit.clamp(1, MAX_LISTED_DELIVERIES))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state")?;
                let id: uuid::Uuid = r.try_get("id")?;
                Ok(DeliveryView {
                    id: id.to_string(),
                    webhook_id: r.try_get("webhook_id")?,
                    event: r.try_get("event_kind")?,
                    ledger_seq: r.try_get("event_seq")?,
                    next_attempt_at: if state == "pending" {
                        r.try_get("next_attempt_at")?
                    } else {
                        None
                    },
                    state,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    last_status: r.try_get("last_status")?,
                    delivered_at: r.try_get("delivered_at")?,
                    failed_at: r.try_get("failed_at")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::events::KillSwitchSet;

    fn row(event: &LedgerEvent, seq: i64) -> chain::EventRow {
        chain::EventRow {
            seq,
            chain_id: chain::GLOBAL_CHAIN.to_string(),
            chain_pos: 1,
            event_type: event.kind().as_str().to_string(),
            recorded_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            actor: "alice".into(),
            resource: "global".into(),
            origin: "{}".into(),
            payload: event.payload_json(),
            prev_hash: chain::GENESIS,
            hash: chain::GENESIS,
        }
    }

    #[test]
    fn a_kill_switch_event_notifies_kill_switch_masked() {
        let event = LedgerEvent::KillSwitchSet(KillSwitchSet {
            scope: "agent:a-1".into(),
            active: true,
            actor: "alice".into(),
            reason: "card 4111 1111 1111 1111 leaked".into(),
        });
        let r = row(&event, 42);
        let out = notifications_of(&r.event_type, &r.payload, &r);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, EventKind::KillSwitch);
        let v: serde_json::Value = serde_json::from_str(&out[0].1).unwrap();
        assert_eq!(v["scope"], "agent:a-1");
        assert_eq!(v["active"], true);
        assert_eq!(v["ledgerSeq"], 42);
        assert!(!out[0].1.contains("4111 1111 1111 1111"), "{}", out[0].1);
    }

    #[test]
    fn events_that_announce_nothing_or_do_not_parse_give_nothing() {
        let r = chain::EventRow {
            event_type: kind::INTENT_DECIDED.into(),
            payload: "{not json".into(),
            ..row(
                &LedgerEvent::KillSwitchSet(KillSwitchSet {
                    scope: "global".into(),
                    active: false,
                    actor: "a".into(),
                    reason: "r".into(),
                }),
                1,
            )
        };
        assert!(notifications_of(&r.event_type, &r.payload, &r).is_empty());
        assert!(notifications_of("fx_rate_set", "{}", &r).is_empty());
    }
}
