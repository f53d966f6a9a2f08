//! The approver's side of the API (SPEC §13.1): an inbox of what a token's approver may
//! vote on, and signed votes submitted over HTTP. A token of role `approver` is bound to
//! one approverId of the registry; it says who may submit, never what is approved: the
//! vote's Ed25519 signature does that, checked by [`crate::vote_intake`] exactly as for
//! `spend.approvals`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::MethodRouter;
use axum::{Extension, Json};
use futures::future::BoxFuture;

use super::views::{
    ApprovalSoFarView, DecisionUsageView, PendingApprovalView, ReasonView, VoteAcceptedView,
};
use super::{ApiError, ApiState, Principal, StoreError};
use crate::approvals::{Registry, glob_to_like};
use crate::decision::{ApprovalSoFar, DecisionMessage};
use crate::ledger::query::PendingApprovalRow;
use crate::ledger::{Ledger, Origin, VoteResult};

/// The registry as it is now (serve reloads it when the file changes).
pub type RegistrySource = Arc<dyn Fn() -> Arc<Registry> + Send + Sync>;

/// What the approver routes need from the service.
pub trait ApprovalDesk: Send + Sync + 'static {
    /// Up to `limit` waiting intents `approver_id` may still vote on, oldest first.
    fn pending_for<'a>(
        &'a self,
        approver_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<PendingApprovalView>, ApiError>>;
    /// A signed vote on `intent_id`, sent with a token bound to `approver_id`.
    fn submit<'a>(
        &'a self,
        approver_id: &'a str,
        intent_id: &'a str,
        raw: Bytes,
    ) -> BoxFuture<'a, Result<VoteResult, StoreError>>;
}

/// No ledger behind the API (unit tests of other routes).
pub struct Disabled;

fn disabled() -> StoreError {
    StoreError::Unavailable("approvals are not served by this instance".into())
}

impl ApprovalDesk for Disabled {
    fn pending_for<'a>(
        &'a self,
        _: &'a str,
        _: usize,
    ) -> BoxFuture<'a, Result<Vec<PendingApprovalView>, ApiError>> {
        Box::pin(async { Err(disabled().into()) })
    }
    fn submit<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Bytes,
    ) -> BoxFuture<'a, Result<VoteResult, StoreError>> {
        Box::pin(async { Err(disabled()) })
    }
}

/// The service's desk: its ledger and live registry.
pub struct LedgerApprovals {
    pub ledger: Arc<Ledger>,
    pub registry: RegistrySource,
    /// Recorded as the origin instance of the vote events.
    pub instance: String,
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("ledger query failed: {e}"))
}

impl ApprovalDesk for LedgerApprovals {
    fn pending_for<'a>(
        &'a self,
        approver_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<PendingApprovalView>, ApiError>> {
        Box::pin(async move {
            let registry = (self.registry)();
            let approver = registry
                .get(approver_id)
                .ok_or_else(|| unregistered(approver_id))?;
            let likes: Vec<String> = approver.entities.iter().map(|p| glob_to_like(p)).collect();
            let rows = self
                .ledger
                .reader()
                .pending_approvals_for(approver_id, &likes, limit)
                .await
                .map_err(db)?;
            Ok(rows.into_iter().map(pending_view).collect())
        })
    }

    fn submit<'a>(
        &'a self,
        approver_id: &'a str,
        intent_id: &'a str,
        raw: Bytes,
    ) -> BoxFuture<'a, Result<VoteResult, StoreError>> {
        Box::pin(async move {
            let origin = Origin {
                instance: self.instance.clone(),
                source: "api".into(),
                partition: None,
                offset: None,
            };
            let registry = (self.registry)();
            crate::vote_intake::submit(
                &self.ledger,
                &registry,
                &raw,
                crate::vote_intake::Submitter {
                    approver_id,
                    intent_id,
                },
                &origin,
            )
            .await
            .map_err(db)
        })
    }
}

fn unregistered(approver_id: &str) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::FORBIDDEN,
        code: "unknown_approver".into(),
        message: format!(
            "this token is bound to approver {approver_id}, who is not in the approver registry"
        ),
        field: None,
    }
}

/// A pending row as the API shows it; the decision message gains the approvals so far.
pub fn pending_view(r: PendingApprovalRow) -> PendingApprovalView {
    let message: Option<DecisionMessage> = serde_json::from_str(&r.message).ok();
    let so_far: Vec<ApprovalSoFar> = serde_json::from_str(&r.votes).unwrap_or_default();
    let minor = crate::money::currency(&r.currency).map_or(2, |c| c.minor_units);
    let message = message.map(|mut m| {
        if let Some(a) = m.approval.as_mut() {
            a.approvals = so_far.clone();
        }
        m
    });
    let m = message.as_ref();
    PendingApprovalView {
        intent_id: r.intent_id,
        agent_id: r.agent_id,
        entity_id: r.entity_id,
        amount: crate::money::format_amount(r.amount, minor),
        currency: r.currency,
        effect: crate::decision::Effect::parse(&r.effect)
            .unwrap_or(crate::decision::Effect::RequireHitl),
        approvals_required: u32::try_from(r.approvals_required).unwrap_or(0),
        approvals_received: u32::try_from(r.received).unwrap_or(0),
        decided_at: m.map_or_else(chrono::Utc::now, |m| m.decided_at),
        expires_at: Some(r.expires_at),
        policy: m.and_then(|m| m.policy.clone()),
        reasons: m.map(reason_views).unwrap_or_default(),
        usage: m.and_then(|m| usage_view(m, minor)),
        decision_hash: m
            .and_then(|m| m.approval.as_ref())
            .map(|a| a.terms.decision_hash.clone()),
        approvals: so_far
            .into_iter()
            .map(|v| ApprovalSoFarView {
                approver_id: v.approver_id,
                vote: v.vote.as_str().to_string(),
                signed_at: v.signed_at,
                ledger_seq: v.ledger_seq,
            })
            .collect(),
        decision: message,
    }
}

fn reason_views(m: &DecisionMessage) -> Vec<ReasonView> {
    m.reasons
        .iter()
        .map(|r| ReasonView {
            effect: r.effect,
            code: r.code.to_string(),
            detail: r.detail.to_string(),
        })
        .collect()
}

fn usage_view(m: &DecisionMessage, minor: u32) -> Option<DecisionUsageView> {
    m.usage.as_ref().map(|u| DecisionUsageView {
        daily_so_far: crate::money::format_amount(u.daily_so_far, minor),
        monthly_so_far: crate::money::format_amount(u.monthly_so_far, minor),
        day: u.window.day.to_string(),
        tz: u.window.tz.clone(),
    })
}

/// The approverId an `approver` token is bound to.
pub(crate) fn bound_approver(state: &ApiState, principal: &Principal) -> Result<String, ApiError> {
    state
        .tokens
        .approver_of(&principal.name)
        .map(str::to_string)
        .ok_or_else(|| ApiError::Rejected {
            status: StatusCode::FORBIDDEN,
            code: "forbidden".into(),
            message: "this token is not bound to an approver".into(),
            field: None,
        })
}

async fn post_vote(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(intent_id): Path<String>,
    body: Bytes,
) -> Result<Json<VoteAcceptedView>, ApiError> {
    super::check_id("intentId", &intent_id)?;
    let approver = bound_approver(&state, &principal)?;
    match state.approvals.submit(&approver, &intent_id, body).await? {
        VoteResult::Accepted { seq, outcome } => Ok(Json(VoteAcceptedView {
            result: "accepted".into(),
            ledger_seq: seq,
            outcome: outcome.map(|o| o.outcome.as_str().to_string()),
        })),
        VoteResult::Refused {
            seq,
            reason,
            detail,
        } => Err(ApiError::Rejected {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: reason,
            message: format!("{detail} (recorded as ledgerSeq {seq})"),
            field: None,
        }),
    }
}

pub(crate) fn route_votes_post() -> MethodRouter<ApiState> {
    axum::routing::post(post_vote)
}
