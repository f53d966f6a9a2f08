//! `GET /v1/policies/{name}/history`, `GET /v1/policies/{name}/diff`,
//! `POST /v1/policies/{name}/rollback` (SPEC §16): the API equivalents of `spendguard
//! policy history | diff | rollback`, over the same ledger calls and the same helpers
//! ([`crate::policy::revisions`]).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::MethodRouter;
use axum::{Extension, Json};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, JsonBody, Principal};
use crate::ledger::policy_history::{PolicyHistoryError, PolicyRevision, RevisionContent};
use crate::ledger::{Ledger, Origin};
use crate::policy::revisions::{self, RevisionError};

/// Reads a policy's revisions and rolls back. `rollback` must record the audited
/// activation before it returns, then write the content where the service reads it.
pub trait PolicyLifecycle: Send + Sync + 'static {
    fn history(&self, name: String) -> BoxFuture<'_, Result<Vec<RevisionContent>, ApiError>>;
    fn rollback(&self, request: RollbackCall) -> BoxFuture<'_, Result<RollbackView, ApiError>>;
}

pub struct RollbackCall {
    pub name: String,
    pub revision: String,
    pub actor: String,
    pub reason: String,
}

/// Where the API has no ledger (tests of other routes): every call is 503.
pub struct Disabled;

impl PolicyLifecycle for Disabled {
    fn history(&self, _: String) -> BoxFuture<'_, Result<Vec<RevisionContent>, ApiError>> {
        Box::pin(async {
            Err(ApiError::Unavailable(
                "policy history is not served here".into(),
            ))
        })
    }
    fn rollback(&self, _: RollbackCall) -> BoxFuture<'_, Result<RollbackView, ApiError>> {
        Box::pin(async {
            Err(ApiError::Unavailable(
                "policy rollback is not served here".into(),
            ))
        })
    }
}

/// The service's implementation: the ledger, and the policies directory `serve` reads
/// (its watcher picks the restored file up at the next poll). Without a directory a
/// rollback is refused before anything is recorded.
pub struct LedgerPolicyLifecycle {
    pub ledger: Arc<Ledger>,
    pub instance: String,
    pub policies_dir: Option<PathBuf>,
}

fn history_error(e: PolicyHistoryError) -> ApiError {
    match e {
        PolicyHistoryError::UnknownPolicy(_) | PolicyHistoryError::UnknownRevision { .. } => {
            ApiError::NotFound(e.to_string())
        }
        PolicyHistoryError::AlreadyActive { .. } => ApiError::Rejected {
            status: axum::http::StatusCode::CONFLICT,
            code: "already_active".into(),
            message: e.to_string(),
            field: None,
        },
        PolicyHistoryError::MissingReason => ApiError::InvalidRequest(e.to_string()),
        PolicyHistoryError::Ledger(e) if e.fault().is_retried_without_end() => {
            ApiError::Unavailable(e.to_string())
        }
        PolicyHistoryError::Ledger(e) => ApiError::Internal(e.to_string()),
    }
}

fn revision_error(e: RevisionError) -> ApiError {
    match e {
        RevisionError::NotFound(m) => ApiError::NotFound(m),
        RevisionError::Ambiguous(m) => ApiError::InvalidRequest(m),
        RevisionError::Directory(m) => ApiError::Unavailable(m),
        RevisionError::Write(m) => ApiError::Internal(m),
    }
}

impl PolicyLifecycle for LedgerPolicyLifecycle {
    fn history(&self, name: String) -> BoxFuture<'_, Result<Vec<RevisionContent>, ApiError>> {
        Box::pin(async move {
            self.ledger
                .policy_history(&name)
                .await
                .map_err(history_error)
        })
    }

    fn rollback(&self, call: RollbackCall) -> BoxFuture<'_, Result<RollbackView, ApiError>> {
        Box::pin(async move {
            let Some(dir) = &self.policies_dir else {
                return Err(ApiError::Unavailable(
                    "this process has no policies directory to restore into; use `spendguard policy rollback --policies DIR`".into(),
                ));
            };
            let file = revisions::policy_file(dir, &call.name).map_err(revision_error)?;
            let h = self
                .ledger
                .policy_history(&call.name)
                .await
                .map_err(history_error)?;
            let revision =
                revisions::resolve(&h, &call.name, &call.revision).map_err(revision_error)?;
            let (new, canonical) = self
                .ledger
                .rollback_policy(
                    &call.name,
                    revision,
                    &call.actor,
                    &call.reason,
                    &api_origin(&self.instance),
                )
                .await
                .map_err(history_error)?;
            revisions::write_restored(&file, &canonical, &new).map_err(|e| {
                ApiError::Internal(format!(
                    "rollback recorded as revision {} (ledgerSeq {}) but {} was not replaced: {e}",
                    new.revision,
                    new.seq,
                    file.display()
                ))
            })?;
            tracing::warn!(policy = %call.name, to = revision, actor = %call.actor, "policy rolled back");
            Ok(RollbackView {
                rolled_back_to: revision,
                activated: new,
                file: file.display().to_string(),
            })
        })
    }
}

fn api_origin(instance: &str) -> Origin {
    Origin {
        source: "api".into(),
        ..Origin::cli(instance)
    }
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PolicyHistoryView {
    pub name: String,
    /// Oldest first; the last is the latest activation.
    pub revisions: Vec<PolicyRevision>,
}

#[derive(Debug, Deserialize)]
pub struct DiffQuery {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct PolicyDiffView {
    pub name: String,
    pub from: PolicyRevision,
    pub to: PolicyRevision,
    /// The line diff of the canonical contents, as `spendguard policy diff` prints it.
    pub diff: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A revision number as the history lists it (`"3"`), or a version label carried by
    /// one content.
    pub revision: String,
    /// Why; recorded with the activation.
    pub reason: String,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackView {
    pub rolled_back_to: i64,
    /// The new revision (actor `api:<token name>`).
    pub activated: PolicyRevision,
    /// The policy file replaced in the service's directory (the watcher loads it at its
    /// next poll).
    pub file: String,
}

async fn get_history(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<PolicyHistoryView>, ApiError> {
    let h = state.policy_lifecycle.history(name.clone()).await?;
    Ok(Json(PolicyHistoryView {
        name,
        revisions: h.into_iter().map(|(r, _)| r).collect(),
    }))
}

async fn get_diff(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    query: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PolicyDiffView>, ApiError> {
    let Query(q) = query.map_err(|_| {
        ApiError::InvalidRequest(
            "give ?from=REVISION&to=REVISION (numbers or version labels)".into(),
        )
    })?;
    let h = state.policy_lifecycle.history(name.clone()).await?;
    let a = revisions::resolve(&h, &name, &q.from).map_err(revision_error)?;
    let b = revisions::resolve(&h, &name, &q.to).map_err(revision_error)?;
    let (ra, ca) = &h[(a - 1) as usize];
    let (rb, cb) = &h[(b - 1) as usize];
    Ok(Json(PolicyDiffView {
        name,
        diff: revisions::render_diff(ra, ca, rb, cb),
        from: ra.clone(),
        to: rb.clone(),
    }))
}

async fn post_rollback(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<RollbackRequest>,
) -> Result<Json<RollbackView>, ApiError> {
    let call = RollbackCall {
        name,
        revision: body.revision,
        actor: format!("api:{}", principal.name),
        reason: body.reason,
    };
    Ok(Json(state.policy_lifecycle.rollback(call).await?))
}

pub(crate) fn route_history() -> MethodRouter<ApiState> {
    axum::routing::get(get_history)
}
pub(crate) fn route_diff() -> MethodRouter<ApiState> {
    axum::routing::get(get_diff)
}
pub(crate) fn route_rollback() -> MethodRouter<ApiState> {
    axum::routing::post(post_rollback)
}
