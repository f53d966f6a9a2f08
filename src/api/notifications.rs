//! `GET /v1/notifications` (SPEC §13.2): recent webhook deliveries with their attempts,
//! last error and state, for operators and auditors.

use axum::Json;
use axum::extract::{Query, State};
use axum::routing::MethodRouter;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
pub use crate::ledger::notifications::DeliveryView;

/// Default and largest page.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = crate::ledger::notifications::MAX_LISTED_DELIVERIES as usize;

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsQuery {
    state: Option<String>,
    limit: Option<usize>,
}

pub(crate) fn route() -> MethodRouter<ApiState> {
    axum::routing::get(get_notifications)
}

async fn get_notifications(
    State(state): State<ApiState>,
    query: Result<Query<NotificationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Notifications>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    if let Some(s) = query.state.as_deref()
        && !matches!(s, "pending" | "delivered" | "failed")
    {
        return Err(ApiError::InvalidRequest(format!(
            "state={s:?}: use pending, delivered or failed"
        )));
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be 1..={MAX_PAGE}"
        )));
    }
    let deliveries = state.ledger.notifications(query.state, limit).await?;
    Ok(Json(Notifications { deliveries }))
}
