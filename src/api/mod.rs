//! The operators' and auditors' HTTP API (axum), mounted inside `spendguard serve`.
//!
//! Every route is declared once in [`openapi::OPERATIONS`] with its method, path, roles and
//! response shapes; the router and the OpenAPI document are both built from that table, so
//! the document cannot drift from the routes.
//!
//! The API reads through small traits ([`LedgerQueries`], [`PolicyCatalog`],
//! [`KillSwitchControl`], [`FxRateControl`], [`ReadinessProbe`]) so the service can hand it its live ledger
//! pool, the active policy set and the kill switch without this module knowing how they
//! are wired.

pub mod approvals;
pub mod auth;
pub mod backends;
pub mod console;
pub mod error;
pub mod intake;
pub mod notifications;
pub mod openapi;
pub mod policy_lifecycle;
pub mod tls;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Extension, Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use rust_decimal::Decimal;
use serde::Deserialize;

pub use auth::{Principal, Role, TokenStore};
pub use error::{ApiError, StoreError};
use views::*;

use crate::decision::PolicyIdentity;
use crate::ledger::limit_usage::{LimitUsage, LimitUsageReport};
use crate::policy::CompiledPolicy;
use crate::window::Windows;

/// Largest request body accepted, in bytes. The bodies are a kill-switch request (scope +
/// reason ≤ 1 KiB) and an exchange rate (pair, rate + reason ≤ 1 KiB); 8 KiB leaves room
/// without letting a client make us buffer more.
pub const MAX_REQUEST_BODY_BYTES: usize = 8 * 1024;
/// Most pending approvals returned by one request.
pub const MAX_PENDING_APPROVALS_PAGE: usize = 500;
/// Default page size of the approvals queue.
pub const DEFAULT_PENDING_APPROVALS_PAGE: usize = 100;
/// Longest id accepted in a path or query (same bound as intent ids).
pub const MAX_PATH_ID_LEN: usize = crate::intent::MAX_ID_LEN;
/// Longest kill-switch reason.
pub const MAX_KILL_SWITCH_REASON_LEN: usize = 1024;

/// Amounts an agent has in its current windows (from the ledger's usage projection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowAmounts {
    pub daily_spent: Decimal,
    pub daily_reserved: Decimal,
    pub monthly_spent: Decimal,
    pub monthly_reserved: Decimal,
}

/// What the usage endpoint needs to know about the policy bound to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLimits {
    pub identity: PolicyIdentity,
    pub currency: crate::money::Currency,
    pub tz: Tz,
    pub daily_cap: Option<Decimal>,
    pub monthly_cap: Option<Decimal>,
}

/// Read access to the ledger.
pub trait LedgerQueries: Send + Sync + 'static {
    /// The recorded decision for an intent, with votes and outcome; `None` if unknown.
    fn decision<'a>(
        &'a self,
        intent_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DecisionView>, StoreError>>;
    /// The entity of the agent's most recent recorded intent; `None` if the agent is unknown.
    fn agent_entity<'a>(
        &'a self,
        agent_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
    /// Committed and reserved amounts in the windows given (local day / month of `tz`),
    /// in `currency`.
    fn window_amounts<'a>(
        &'a self,
        agent_id: &'a str,
        windows: Windows,
        tz: Tz,
        currency: &'a str,
    ) -> BoxFuture<'a, Result<WindowAmounts, StoreError>>;
    /// Intents waiting for approval, oldest first.
    fn pending_approvals(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<PendingApprovalView>, StoreError>>;
    /// The policy's limits now, at the ledger's clock: every limit for an agent of an
    /// entity, only the entity-scoped ones with `agent_id: None`.
    fn limit_usage(
        &self,
        policy: Arc<CompiledPolicy>,
        agent_id: Option<String>,
        entity_id: String,
    ) -> BoxFuture<'_, Result<LimitUsageReport, StoreError>> {
        let _ = (policy, agent_id, entity_id);
        Box::pin(async {
            Err(StoreError::Unavailable(
                "this ledger does not report limit usage".into(),
            ))
        })
    }
    /// Recent webhook deliveries, newest first (`state`: pending / delivered / failed).
    fn notifications(
        &self,
        state: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<notifications::DeliveryView>, StoreError>> {
        let _ = (state, limit);
        Box::pin(async {
            Err(StoreError::Unavailable(
                "this ledger does not keep webhook deliveries".into(),
            ))
        })
    }
    /// The `limit` most recent decisions, newest first, each as `decision` shows it.
    fn recent_decisions(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DecisionView>, StoreError>> {
        let _ = limit;
        Box::pin(async {
            Err(StoreError::Unavailable(
                "this ledger does not list recent decisions".into(),
            ))
        })
    }
    /// Agents the ledger has seen under an entity.
    fn entity_agents<'a>(
        &'a self,
        entity_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let _ = entity_id;
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// The active policy set.
pub trait PolicyCatalog: Send + Sync + 'static {
    fn active(&self) -> Vec<PolicyView>;
    /// The policy bound to an agent of an entity (most specific binding), if any.
    fn limits_for(&self, agent_id: &str, entity_id: &str) -> Option<PolicyLimits>;
    /// The compiled policy bound to an agent of an entity (its limits are reported).
    fn policy_for(&self, agent_id: &str, entity_id: &str) -> Option<Arc<CompiledPolicy>> {
        let _ = (agent_id, entity_id);
        None
    }
    /// The policies bound to an entity: the entity's own binding (entity pattern, else
    /// `default`), then the policy of each of `agents` under it; without duplicates.
    fn entity_policies(&self, entity_id: &str, agents: &[String]) -> Vec<Arc<CompiledPolicy>> {
        let _ = (entity_id, agents);
        Vec::new()
    }
}

/// A kill-switch change as requested through the API (actor `api:<token name>`): the
/// kill switch's own [`Change`](crate::kill_switch::Change).
pub use crate::kill_switch::Change as KillSwitchChange;

/// Reads and changes the kill switch. `set` must record the audited ledger event before
/// it returns, and propagate to every instance (`spend.control`): the service's
/// implementation is [`crate::kill_switch::record_then_announce`].
pub trait KillSwitchControl: Send + Sync + 'static {
    fn status(&self) -> BoxFuture<'_, Result<KillSwitchStatus, StoreError>>;
    fn set(
        &self,
        change: KillSwitchChange,
    ) -> BoxFuture<'_, Result<KillSwitchScopeView, StoreError>>;
}

/// An exchange rate as set through the API (SPEC §12.3): checked
/// ([`crate::money::parse_fx_rate`], [`crate::money::check_fx_reason`]), actor
/// `api:<token name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FxRateChange {
    pub rate: crate::money::FxRate,
    pub actor: String,
    pub reason: String,
}

/// Reads and records exchange rates. `set` must record the audited `fx_rate_set` ledger
/// event before it returns (decisions read the latest rate from the ledger, so nothing
/// else needs telling): the service's implementation is [`backends::LedgerFxRates`].
pub trait FxRateControl: Send + Sync + 'static {
    /// The latest rate of every pair, by pair.
    fn rates(&self) -> BoxFuture<'_, Result<Vec<FxRateView>, StoreError>>;
    /// Records a rate; answers its ledger sequence.
    fn set(&self, change: FxRateChange) -> BoxFuture<'_, Result<i64, StoreError>>;
}

/// Whether the instance can do its job (PostgreSQL answers, broker answers, partitions
/// assigned).
pub trait ReadinessProbe: Send + Sync + 'static {
    fn check(&self) -> BoxFuture<'_, Vec<ReadinessCheck>>;
}

/// Everything the handlers need. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub tokens: Arc<TokenStore>,
    pub ledger: Arc<dyn LedgerQueries>,
    pub policies: Arc<dyn PolicyCatalog>,
    pub kill_switch: Arc<dyn KillSwitchControl>,
    pub fx_rates: Arc<dyn FxRateControl>,
    pub readiness: Arc<dyn ReadinessProbe>,
    /// `POST /v1/intents` and `/v1/settlements` (serve: [`intake::LedgerIntake`]).
    pub intake: Arc<dyn intake::Intake>,
    /// The approver role's inbox and votes (serve: [`approvals::LedgerApprovals`]).
    pub approvals: Arc<dyn approvals::ApprovalDesk>,
    pub metrics: PrometheusHandle,
    /// The last periodic chain verification of this serve, for the console.
    pub chain: Arc<console::ChainStatus>,
    /// Policy history, diff and rollback (serve: [`policy_lifecycle::LedgerPolicyLifecycle`]).
    pub policy_lifecycle: Arc<dyn policy_lifecycle::PolicyLifecycle>,
    /// The clock for usage windows (tests pin it; the service passes `Utc::now`).
    pub clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

/// The API's router, with authentication, body limit, JSON errors and request metrics.
pub fn router(state: ApiState) -> Router {
    let mut router: Router<ApiState> = Router::new();
    for op in openapi::OPERATIONS {
        let mut method_router: MethodRouter<ApiState> = (op.handler)();
        if !op.roles.is_empty() {
            method_router = method_router.route_layer(middleware::from_fn_with_state(
                Gate {
                    tokens: state.tokens.clone(),
                    op,
                },
                require_role,
            ));
        }
        router = router.route(op.path, method_router);
    }
    router
        .merge(console::routes())
        .fallback(|| async { ApiError::NotFound("no such route; see /openapi.json".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(deadline))
        .layer(middleware::from_fn(record_request))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY_BYTES))
        .with_state(state)
}

/// Longest time a request may take, whatever it waits on (a slow database, a lock, the
/// broker): past it the caller gets 503 `unavailable` and may retry (SPEC §15).
pub const REQUEST_DEADLINE_MS: u64 = 10_000;

async fn deadline(request: Request, next: Next) -> Response {
    match tokio::time::timeout(
        std::time::Duration::from_millis(REQUEST_DEADLINE_MS),
        next.run(request),
    )
    .await
    {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request did not complete within {REQUEST_DEADLINE_MS} ms; retry later"
        ))
        .into_response(),
    }
}

/// Serves the API on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_listener(listener, state, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0 and read the address back).
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "HTTP API listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the API over HTTPS on an already bound listener until `shutdown` completes;
/// requests in flight then get [`REQUEST_DEADLINE_MS`] to finish.
pub async fn serve_listener_tls(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: axum_server::tls_rustls::RustlsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "HTTPS API listening");
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(std::time::Duration::from_millis(REQUEST_DEADLINE_MS)));
    });
    axum_server::from_tcp_rustls(listener.into_std()?, tls)?
        .handle(handle)
        .serve(router(state).into_make_service())
        .await
}

#[derive(Clone)]
struct Gate {
    tokens: Arc<TokenStore>,
    op: &'static openapi::Operation,
}

async fn require_role(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let principal = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer_token)
        .and_then(|token| gate.tokens.authenticate(token));
    let Some(principal) = principal else {
        return ApiError::Unauthorized.into_response();
    };
    if !gate.op.roles.contains(&principal.role) {
        return ApiError::Forbidden {
            role: principal.role.as_str(),
            action: format!("{} {}", gate.op.method.to_uppercase(), gate.op.path),
            allowed: gate
                .op
                .roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The route template, never the raw path: ids must not become label values.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    crate::telemetry::record_http_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `Json` whose rejections are our JSON errors (413 for oversized bodies, 415, 400).
struct JsonBody<T>(T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection;
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge {
                    limit_bytes: MAX_REQUEST_BODY_BYTES,
                })
            }
            Err(e) => Err(ApiError::InvalidRequest(format!(
                "invalid JSON body: {}",
                e.body_text()
            ))),
        }
    }
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_PATH_ID_LEN || id.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest(format!(
            "{what} must be 1..={MAX_PATH_ID_LEN} printable characters"
        )));
    }
    Ok(())
}

// ---- handlers ----

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let checks = state.readiness.check().await;
    let ready = !checks.is_empty() && checks.iter().all(|c| c.ok);
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, checks })).into_response()
}

async fn metrics_text(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

/// A path parameter as extracted, its rejection kept so it can be answered in JSON.
type PathParam = Result<Path<String>, axum::extract::rejection::PathRejection>;

/// The id in the path, checked. axum's own rejection is plain text; a percent-encoded id
/// that is not UTF-8 (`/v1/decisions/%ff`) gets our JSON 400 `invalid_request` instead.
fn path_id(what: &str, path: PathParam) -> Result<String, ApiError> {
    let Path(id) =
        path.map_err(|e| ApiError::InvalidRequest(format!("{what}: {}", e.body_text())))?;
    check_id(what, &id)?;
    Ok(id)
}

async fn get_decision(
    State(state): State<ApiState>,
    path: PathParam,
) -> Result<Json<DecisionView>, ApiError> {
    let intent_id = path_id("intentId", path)?;
    match state.ledger.decision(&intent_id).await? {
        Some(d) => Ok(Json(d)),
        None => Err(ApiError::NotFound(format!(
            "no decision is recorded for intent {intent_id:?}"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Entity to resolve the policy binding for; default: the entity of the agent's last intent.
    pub entity: Option<String>,
}

async fn get_usage(
    State(state): State<ApiState>,
    path: PathParam,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AgentUsageView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let agent_id = path_id("agentId", path)?;
    let entity_id = match query.entity {
        Some(e) => {
            check_id("entity", &e)?;
            e
        }
        None => state.ledger.agent_entity(&agent_id).await?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "agent {agent_id:?} has no recorded intents; pass ?entity=ID to see its (empty) windows"
            ))
        })?,
    };
    let limits = state.policies.limits_for(&agent_id, &entity_id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no policy is bound to agent {agent_id:?} of entity {entity_id:?}: add a binding in bindings.yaml"
        ))
    })?;
    let now = (state.clock)();
    let windows = Windows::containing(now, limits.tz);
    let amounts = state
        .ledger
        .window_amounts(&agent_id, windows, limits.tz, limits.currency.code)
        .await?;
    let mut view = usage_view(agent_id, entity_id, &limits, windows, amounts, now);
    if let Some(policy) = state
        .policies
        .policy_for(&view.agent_id, &view.entity_id)
        .filter(|p| !p.limits().is_empty())
    {
        let minor = policy.currency.minor_units;
        let report = state
            .ledger
            .limit_usage(policy, Some(view.agent_id.clone()), view.entity_id.clone())
            .await?;
        view.limits = report
            .limits
            .iter()
            .map(|l| limit_usage_view(l, minor))
            .collect();
        view.limits_as_of = Some(report.as_of);
    }
    Ok(Json(view))
}

async fn get_entity_usage(
    State(state): State<ApiState>,
    path: PathParam,
) -> Result<Json<EntityUsageView>, ApiError> {
    let entity_id = path_id("entityId", path)?;
    let agents = state.ledger.entity_agents(&entity_id).await?;
    let policies = state.policies.entity_policies(&entity_id, &agents);
    if policies.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no policy is bound to entity {entity_id:?} or to an agent recorded under it: add a binding in bindings.yaml"
        )));
    }
    let mut out = Vec::new();
    for policy in policies {
        if !crate::ledger::decide::has_entity_limits(&policy) {
            continue;
        }
        let report = state
            .ledger
            .limit_usage(policy.clone(), None, entity_id.clone())
            .await?;
        out.push(EntityPolicyUsageView {
            policy: policy.identity.clone(),
            currency: policy.currency.code.to_string(),
            timezone: policy.tz.name().to_string(),
            as_of: report.as_of,
            limits: report
                .limits
                .iter()
                .map(|l| limit_usage_view(l, policy.currency.minor_units))
                .collect(),
        });
    }
    Ok(Json(EntityUsageView {
        entity_id,
        policies: out,
    }))
}

/// Pure: the API view of one limit's usage.
pub fn limit_usage_view(l: &LimitUsage, minor_units: u32) -> LimitUsageView {
    let fmt = |d: Decimal| crate::money::format_amount(d, minor_units);
    LimitUsageView {
        name: l.name.clone(),
        scope: match l.scope {
            crate::policy::model::LimitScope::Agent => "agent",
            crate::policy::model::LimitScope::Entity => "entity",
        }
        .into(),
        window: l.window.clone(),
        amount: l.amount.map(fmt),
        amount_used: l.amount.map(|_| fmt(l.amount_used)),
        amount_remaining: l.amount_remaining.map(fmt),
        count: l.count,
        count_used: l.count.map(|_| l.count_used),
        count_remaining: l.count_remaining,
        resets_at: l.resets_at,
        frees_next_at: l.frees_next_at,
    }
}

/// Pure: the usage view of one agent's windows.
pub fn usage_view(
    agent_id: String,
    entity_id: String,
    limits: &PolicyLimits,
    windows: Windows,
    amounts: WindowAmounts,
    now: DateTime<Utc>,
) -> AgentUsageView {
    let minor = limits.currency.minor_units;
    let fmt = |d: Decimal| crate::money::format_amount(d, minor);
    let window = |name: &str,
                  period: String,
                  spent: Decimal,
                  reserved: Decimal,
                  cap: Option<Decimal>,
                  resets_at| {
        WindowUsageView {
            window: name.into(),
            period,
            spent: fmt(spent),
            reserved: fmt(reserved),
            cap: cap.map(fmt),
            remaining: cap.map(|c| fmt((c - spent - reserved).max(Decimal::ZERO))),
            resets_at,
        }
    };
    AgentUsageView {
        agent_id,
        entity_id,
        policy: limits.identity.clone(),
        currency: limits.currency.code.to_string(),
        timezone: limits.tz.name().to_string(),
        as_of: now,
        windows: vec![
            window(
                "day",
                windows.day.to_string(),
                amounts.daily_spent,
                amounts.daily_reserved,
                limits.daily_cap,
                windows.day_resets_at(limits.tz),
            ),
            window(
                "month",
                month_label(windows.month),
                amounts.monthly_spent,
                amounts.monthly_reserved,
                limits.monthly_cap,
                windows.month_resets_at(limits.tz),
            ),
        ],
        limits: Vec::new(),
        limits_as_of: None,
    }
}

fn month_label(first_of_month: NaiveDate) -> String {
    first_of_month.format("%Y-%m").to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsQuery {
    pub status: Option<String>,
    pub limit: Option<usize>,
}

async fn get_approvals(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<ApprovalsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PendingApprovals>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    match query.status.as_deref() {
        None | Some("pending") => {}
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "status={other:?} is not supported: only status=pending (closed intents are in GET /v1/decisions/{{intentId}} and the compliance report)"
            )));
        }
    }
    let limit = query.limit.unwrap_or(DEFAULT_PENDING_APPROVALS_PAGE);
    if limit == 0 || limit > MAX_PENDING_APPROVALS_PAGE {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be 1..={MAX_PENDING_APPROVALS_PAGE}"
        )));
    }
    // An approver sees only what it may vote on (SPEC §13.1); staff see the whole queue.
    let approvals = if principal.role == Role::Approver {
        let approver = approvals::bound_approver(&state, &principal)?;
        state.approvals.pending_for(&approver, limit).await?
    } else {
        state.ledger.pending_approvals(limit).await?
    };
    Ok(Json(PendingApprovals { approvals }))
}

async fn get_kill_switch(
    State(state): State<ApiState>,
) -> Result<Json<KillSwitchStatus>, ApiError> {
    Ok(Json(state.kill_switch.status().await?))
}

async fn post_kill_switch(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody<KillSwitchRequest>,
) -> Result<Json<KillSwitchScopeView>, ApiError> {
    if body.reason.trim().is_empty() || body.reason.len() > MAX_KILL_SWITCH_REASON_LEN {
        return Err(ApiError::InvalidRequest(format!(
            "reason must be 1..={MAX_KILL_SWITCH_REASON_LEN} characters: say why, it goes into the audit trail"
        )));
    }
    let change = KillSwitchChange {
        scope: body.scope,
        on: body.on,
        actor: format!("api:{}", principal.name),
        reason: body.reason,
    };
    tracing::info!(scope = %change.scope, on = change.on, actor = %change.actor, "kill switch change requested");
    Ok(Json(state.kill_switch.set(change).await?))
}

async fn get_fx_rates(State(state): State<ApiState>) -> Result<Json<FxRates>, ApiError> {
    Ok(Json(FxRates {
        rates: state.fx_rates.rates().await?,
    }))
}

async fn post_fx_rate(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody<FxRateRequest>,
) -> Result<Json<FxRateSetView>, ApiError> {
    let bad = |e: crate::money::FxRateError| ApiError::InvalidRequest(e.to_string());
    let rate = crate::money::parse_fx_rate(&body.pair, &body.rate).map_err(bad)?;
    crate::money::check_fx_reason(&body.reason).map_err(bad)?;
    let change = FxRateChange {
        rate,
        actor: format!("api:{}", principal.name),
        reason: body.reason,
    };
    tracing::info!(pair = %rate.pair(), rate = %rate.rate, actor = %change.actor, "exchange rate set requested");
    let seq = state.fx_rates.set(change).await?;
    Ok(Json(FxRateSetView {
        pair: rate.pair(),
        rate: rate.rate.to_string(),
        seq,
    }))
}

async fn get_policies(State(state): State<ApiState>) -> Json<ActivePolicies> {
    let mut policies = state.policies.active();
    policies.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Json(ActivePolicies { policies })
}

// Route constructors referenced by the operation table.
pub(crate) fn route_healthz() -> MethodRouter<ApiState> {
    axum::routing::get(healthz)
}
pub(crate) fn route_readyz() -> MethodRouter<ApiState> {
    axum::routing::get(readyz)
}
pub(crate) fn route_metrics() -> MethodRouter<ApiState> {
    axum::routing::get(metrics_text)
}
pub(crate) fn route_openapi() -> MethodRouter<ApiState> {
    axum::routing::get(openapi_json)
}
pub(crate) fn route_decision() -> MethodRouter<ApiState> {
    axum::routing::get(get_decision)
}
pub(crate) fn route_usage() -> MethodRouter<ApiState> {
    axum::routing::get(get_usage)
}
pub(crate) fn route_entity_usage() -> MethodRouter<ApiState> {
    axum::routing::get(get_entity_usage)
}
pub(crate) fn route_approvals() -> MethodRouter<ApiState> {
    axum::routing::get(get_approvals)
}
pub(crate) fn route_kill_switch_get() -> MethodRouter<ApiState> {
    axum::routing::get(get_kill_switch)
}
pub(crate) fn route_kill_switch_post() -> MethodRouter<ApiState> {
    axum::routing::post(post_kill_switch)
}
pub(crate) fn route_fx_rates_get() -> MethodRouter<ApiState> {
    axum::routing::get(get_fx_rates)
}
pub(crate) fn route_fx_rates_post() -> MethodRouter<ApiState> {
    axum::routing::post(post_fx_rate)
}
pub(crate) fn route_policies() -> MethodRouter<ApiState> {
    axum::routing::get(get_policies)
}

#[cfg(test)]
mod tests;
