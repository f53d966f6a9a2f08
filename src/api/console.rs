//! The approvers' and operators' web console (SPEC §13.3) at `/console`: server-rendered
//! HTML, no script, its stylesheet compiled into the binary.
//!
//! Every view calls the API's own handler for the data it shows, after the same role
//! check the API's operation table makes, so an approver's console lists exactly what
//! `GET /v1/approvals` gives its token and nothing here can drift from the API's rules.
//!
//! Authentication: the API tokens. A browser posts its token once to `/console/login`,
//! which answers with an `HttpOnly; SameSite=Strict; Path=/console` cookie holding the
//! token (hex-encoded, so any token fits a cookie); scripts on the page cannot read it,
//! other sites cannot make the browser send it, and it never appears in a URL. An
//! `Authorization: Bearer` header is accepted as on the API.

use std::sync::RwLock;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::views::*;
use super::{ApiError, ApiState, Principal, Role, auth, openapi};

/// The cookie holding the console's token (hex of the token's bytes).
pub const COOKIE: &str = "spendguard_console";
/// Decisions listed on the overview.
pub const RECENT_DECISIONS: usize = 20;
/// Pending approvals listed on the overview.
pub const CONSOLE_APPROVALS: usize = 100;

const STYLE: &str = include_str!("console/console.css");

/// The outcome of one periodic chain verification (`chain_verify_interval_s`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerification {
    pub at: DateTime<Utc>,
    pub events: u64,
    /// Problems found; empty when every chain verified.
    pub problems: Vec<String>,
    /// Set when the verification could not run at all (the database unreachable).
    pub error: Option<String>,
}

/// The last [`ChainVerification`] of this instance; `None` until the first one has run.
#[derive(Debug, Default)]
pub struct ChainStatus(RwLock<Option<ChainVerification>>);

impl ChainStatus {
    pub fn record(&self, v: ChainVerification) {
        // A poisoned lock only means a writer panicked mid-assignment of a plain value:
        // the value is still whole, so keep going rather than lose the status for good.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }

    pub fn last(&self) -> Option<ChainVerification> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// HTML-escapes text for element content and double- or single-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value (links to the usage view carry ids).
fn url_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Width of a usage bar in whole percent (0..=100): `used / limit`, with `rust_decimal`,
/// so an amount never goes through a float. `None` when the limit is zero or either
/// text is not an amount.
pub fn bar_percent(used: &str, limit: &str) -> Option<u32> {
    let used: Decimal = used.parse().ok()?;
    let limit: Decimal = limit.parse().ok()?;
    if limit <= Decimal::ZERO {
        return None;
    }
    let pct = (used.max(Decimal::ZERO) * Decimal::ONE_HUNDRED / limit)
        .min(Decimal::ONE_HUNDRED)
        .round();
    u32::try_from(pct.mantissa() / 10i128.pow(pct.scale())).ok()
}

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/usage", get(usage))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/kill-switch", post(kill_switch))
        .route("/console/console.css", get(stylesheet))
}

/// Whether the API admits `role` to `method path` (the operation table decides, here too).
fn admits(method: &str, path: &str, role: Role) -> bool {
    openapi::OPERATIONS
        .iter()
        .find(|op| op.method == method && op.path == path)
        .is_some_and(|op| op.roles.contains(&role))
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let value = cookies.split(';').find_map(|c| {
        let (name, value) = c.trim().split_once('=')?;
        (name == COOKIE).then_some(value)
    })?;
    String::from_utf8(hex::decode(value).ok()?).ok()
}

fn principal(state: &ApiState, headers: &HeaderMap) -> Option<Principal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer_token)
        .map(str::to_string);
    bearer
        .or_else(|| cookie_token(headers))
        .and_then(|t| state.tokens.authenticate(&t))
}

/// A state-changing form must come from this console: a browser names the page's origin
/// in `Origin`, and it must be the host the request was sent to. The cookie is already
/// `SameSite=Strict`; this refuses a cross-site post from a browser that ignores it.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://").map(|(_, h)| h));
    matches!((origin_host, host), (Some(o), Some(h)) if o == h)
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            // No script runs on these pages; forms post only to this console.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

fn page(title: &str, who: Option<&Principal>, body: &str) -> String {
    let header = match who {
        Some(p) => format!(
            r#"<p class="who">Signed in as <b>{}</b> ({}) · <a href="/console">overview</a> <form method="post" action="/console/logout" class="inline"><button>Sign out</button></form></p>"#,
            escape(&p.name),
            p.role.as_str()
        ),
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · spendguard</title>
<link rel="stylesheet" href="/console/console.css"></head>
<body><h1>spendguard · {title}</h1>{header}
{body}
</body></html>
"#,
        title = escape(title)
    )
}

fn login_page(status: StatusCode, note: &str) -> Response {
    let note = if note.is_empty() {
        String::new()
    } else {
        format!(r#"<p class="error">{}</p>"#, escape(note))
    };
    let body = format!(
        r#"{note}<form method="post" action="/console/login" class="login">
<label>API token <input type="password" name="token" autocomplete="current-password" required></label>
<button>Sign in</button></form>
<p class="hint">The same bearer tokens as the HTTP API. The token is kept in an HttpOnly cookie for this console only.</p>"#
    );
    html(status, page("sign in", None, &body))
}

fn error_section(e: &ApiError) -> String {
    // Its text says only "see the log", as the API's answer does; the log gets the detail.
    if let ApiError::Internal(detail) = e {
        tracing::error!(%detail, "console view failed");
    }
    format!(r#"<p class="error">{}</p>"#, escape(&e.to_string()))
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/css"))],
        STYLE,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return login_page(StatusCode::FORBIDDEN, "cross-site sign-in refused");
    }
    let Ok(Form(form)) = form else {
        return login_page(StatusCode::BAD_REQUEST, "send the token in the form");
    };
    if state.tokens.authenticate(&form.token).is_none() {
        return login_page(StatusCode::UNAUTHORIZED, "token not accepted");
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/console",
        hex::encode(form.token.as_bytes())
    );
    match HeaderValue::from_str(&cookie) {
        Ok(cookie) => (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, cookie),
                (header::LOCATION, HeaderValue::from_static("/console")),
            ],
        )
            .into_response(),
        Err(_) => login_page(StatusCode::BAD_REQUEST, "token not accepted"),
    }
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "spendguard_console=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0",
                ),
            ),
            (header::LOCATION, HeaderValue::from_static("/console")),
        ],
    )
        .into_response()
}

fn reasons_html(reasons: &[ReasonView]) -> String {
    let items: Vec<String> = reasons
        .iter()
        .map(|r| {
            format!(
                r#"<li><code>{}</code> {} <span class="detail">{}</span></li>"#,
                escape(&r.code),
                escape(r.effect.as_str()),
                escape(&r.detail)
            )
        })
        .collect();
    format!(r#"<ul class="reasons">{}</ul>"#, items.concat())
}

fn usage_link(agent: &str, entity: &str, text: &str) -> String {
    format!(
        r#"<a href="/console/usage?agent={}&amp;entity={}">{}</a>"#,
        url_component(agent),
        url_component(entity),
        escape(text)
    )
}

async fn approvals_section(state: &ApiState, who: &Principal) -> String {
    if !admits("get", "/v1/approvals", who.role) {
        return String::new();
    }
    let query = super::ApprovalsQuery {
        status: Some("pending".into()),
        limit: Some(CONSOLE_APPROVALS),
    };
    let result = super::get_approvals(
        State(state.clone()),
        Extension(who.clone()),
        Ok(Query(query)),
    )
    .await;
    let body = match result {
        Err(e) => error_section(&e),
        Ok(Json(p)) if p.approvals.is_empty() => {
            r#"<p class="empty">No intent is waiting for approval.</p>"#.into()
        }
        Ok(Json(p)) => {
            let rows: Vec<String> = p
                .approvals
                .iter()
                .map(|a| {
                    let expires = a
                        .expires_at
                        .map_or_else(|| "no expiry".to_string(), |t| t.to_rfc3339());
                    format!(
                        r#"<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class="amount">{} {}</td><td>{} ({}/{})</td><td>{}</td><td><time>{}</time></td></tr>"#,
                        escape(&a.intent_id),
                        usage_link(&a.agent_id, &a.entity_id, &a.agent_id),
                        escape(&a.entity_id),
                        escape(&a.amount),
                        escape(&a.currency),
                        escape(a.effect.as_str()),
                        a.approvals_received,
                        a.approvals_required,
                        reasons_html(&a.reasons),
                        escape(&expires),
                    )
                })
                .collect();
            format!(
                r#"<table class="approvals"><tr><th>intent</th><th>agent</th><th>entity</th><th>amount</th><th>effect (approvals)</th><th>reasons</th><th>expires</th></tr>{}</table>"#,
                rows.concat()
            )
        }
    };
    format!(r#"<section id="approvals"><h2>Pending approvals</h2>{body}</section>"#)
}

async fn decisions_section(state: &ApiState, who: &Principal) -> String {
    if !admits("get", "/v1/decisions/{intentId}", who.role) {
        return String::new();
    }
    let body = match state.ledger.recent_decisions(RECENT_DECISIONS).await {
        Err(e) => error_section(&ApiError::from(e)),
        Ok(list) if list.is_empty() => r#"<p class="empty">No decision recorded yet.</p>"#.into(),
        Ok(list) => {
            let rows: Vec<String> = list
                .iter()
                .map(|d| {
                    let outcome = d
                        .outcome
                        .as_ref()
                        .map_or(String::new(), |o| o.outcome.clone());
                    format!(
                        r#"<tr><td><time>{}</time></td><td><code>{}</code></td><td>{}</td><td>{}</td><td class="amount">{} {}</td><td class="effect">{}</td><td>{}</td><td>{}</td></tr>"#,
                        escape(&d.decided_at.to_rfc3339()),
                        escape(&d.intent_id),
                        usage_link(&d.agent_id, &d.entity_id, &d.agent_id),
                        escape(&d.entity_id),
                        escape(&d.amount),
                        escape(&d.currency),
                        escape(d.effect.as_str()),
                        escape(&outcome),
                        reasons_html(&d.reasons),
                    )
                })
                .collect();
            format!(
                r#"<table class="decisions"><tr><th>decided</th><th>intent</th><th>agent</th><th>entity</th><th>amount</th><th>effect</th><th>outcome</th><th>reasons</th></tr>{}</table>"#,
                rows.concat()
            )
        }
    };
    format!(r#"<section id="decisions"><h2>Recent decisions</h2>{body}</section>"#)
}

async fn kill_switch_section(state: &ApiState, who: &Principal) -> String {
    if !admits("get", "/v1/kill-switch", who.role) {
        return String::new();
    }
    let status = match super::get_kill_switch(State(state.clone())).await {
        Err(e) => error_section(&e),
        Ok(Json(s)) if s.active.is_empty() => {
            r#"<p class="ok">No kill switch is tripped.</p>"#.into()
        }
        Ok(Json(s)) => {
            let rows: Vec<String> = s
                .active
                .iter()
                .map(|k| {
                    format!(
                        r#"<tr class="tripped"><td><code>{}</code></td><td>{}</td><td>{}</td><td><time>{}</time></td></tr>"#,
                        escape(&k.scope),
                        escape(&k.actor),
                        escape(&k.reason),
                        escape(&k.since.to_rfc3339())
                    )
                })
                .collect();
            format!(
                r#"<table class="kill-switch"><tr><th>tripped scope</th><th>by</th><th>reason</th><th>since</th></tr>{}</table>"#,
                rows.concat()
            )
        }
    };
    // The form is drawn only for roles the API lets change the switch; the post is
    // checked again on arrival.
    let form = if admits("post", "/v1/kill-switch", who.role) {
        r#"<form method="post" action="/console/kill-switch" id="kill-switch-form">
<label>Scope <input name="scope" value="global" required placeholder="global, entity:ID or agent:ID"></label>
<label>Reason <input name="reason" required maxlength="1024"></label>
<button name="action" value="trip" class="danger">Trip</button>
<button name="action" value="clear">Clear</button></form>"#
    } else {
        ""
    };
    format!(r#"<section id="kill-switch"><h2>Kill switch</h2>{status}{form}</section>"#)
}

fn chain_section(state: &ApiState, who: &Principal) -> String {
    // The verification is an auditor's and operator's concern, like `/metrics`.
    if !matches!(who.role, Role::Operator | Role::Auditor) {
        return String::new();
    }
    let body = match state.chain.last() {
        None => r#"<p class="empty">Chain verification has not run yet on this instance (it runs every <code>chain_verify_interval_s</code>; 0 turns it off). Run <code>spendguard audit verify</code> to check now.</p>"#.to_string(),
        Some(v) => match (&v.error, v.problems.is_empty()) {
            (Some(e), _) => format!(
                r#"<p class="error">The last verification, at <time>{}</time>, could not run: {}</p>"#,
                escape(&v.at.to_rfc3339()),
                escape(e)
            ),
            (None, true) => format!(
                r#"<p class="ok">Every hash chain verified at <time>{}</time> ({} events).</p>"#,
                escape(&v.at.to_rfc3339()),
                v.events
            ),
            (None, false) => {
                let items: Vec<String> = v
                    .problems
                    .iter()
                    .map(|p| format!("<li>{}</li>", escape(p)))
                    .collect();
                format!(
                    r#"<p class="error">Chain verification FAILED at <time>{}</time>: {} problem(s). Run <code>spendguard audit verify</code>.</p><ul>{}</ul>"#,
                    escape(&v.at.to_rfc3339()),
                    v.problems.len(),
                    items.concat()
                )
            }
        },
    };
    format!(r#"<section id="chain"><h2>Audit chain verification</h2>{body}</section>"#)
}

fn usage_form(who: &Principal) -> String {
    if !admits("get", "/v1/agents/{agentId}/usage", who.role) {
        return String::new();
    }
    r#"<section id="usage-lookup"><h2>Usage</h2><form method="get" action="/console/usage">
<label>Agent <input name="agent"></label> <label>Entity <input name="entity"></label>
<button>Show usage</button></form><p class="hint">An agent (its entity optional), or an entity alone for its entity-wide limits.</p></section>"#.into()
}

async fn overview(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let Some(who) = principal(&state, &headers) else {
        return login_page(StatusCode::UNAUTHORIZED, "");
    };
    let body = [
        kill_switch_section(&state, &who).await,
        chain_section(&state, &who),
        approvals_section(&state, &who).await,
        usage_form(&who),
        decisions_section(&state, &who).await,
    ]
    .concat();
    let body = if body.is_empty() {
        format!(
            r#"<p class="empty">The role {} has nothing to see in this console.</p>"#,
            who.role.as_str()
        )
    } else {
        body
    };
    html(StatusCode::OK, page("console", Some(&who), &body))
}

/// A bar for `used` of `limit` ("n/a" and empty when `limit` is not a positive amount).
/// Inline SVG, its width an attribute: the pages' CSP admits no inline style.
fn bar(label: &str, used: &str, limit: &str, unit: &str) -> String {
    let (width, note) = match bar_percent(used, limit) {
        Some(w) => (w, format!("{w}%")),
        None => (0, "n/a".to_string()),
    };
    format!(
        r#"<div class="limit"><span class="label">{label}</span> <span class="figures">{used} / {limit} {unit} ({note})</span><svg class="bar" viewBox="0 0 100 4" preserveAspectRatio="none" role="meter" aria-valuenow="{width}" aria-valuemin="0" aria-valuemax="100"><rect class="track" width="100" height="4"/><rect class="fill{hot}" width="{width}" height="4"/></svg></div>"#,
        label = escape(label),
        used = escape(used),
        limit = escape(limit),
        unit = escape(unit),
        hot = if width >= 90 { " hot" } else { "" },
    )
}

fn limit_bars(limits: &[LimitUsageView], currency: &str) -> String {
    let mut out = String::new();
    for l in limits {
        let name = format!("{} ({}, {})", l.name, l.scope, l.window);
        if let (Some(amount), Some(used)) = (&l.amount, &l.amount_used) {
            out.push_str(&bar(&name, used, amount, currency));
        }
        if let (Some(count), Some(used)) = (l.count, l.count_used) {
            out.push_str(&bar(
                &name,
                &used.to_string(),
                &count.to_string(),
                "intents",
            ));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct UsageForm {
    agent: Option<String>,
    entity: Option<String>,
}

async fn usage(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<UsageForm>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(who) = principal(&state, &headers) else {
        return login_page(StatusCode::UNAUTHORIZED, "");
    };
    let Ok(Query(q)) = query else {
        return html(
            StatusCode::BAD_REQUEST,
            page("usage", Some(&who), r#"<p class="error">bad query</p>"#),
        );
    };
    let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let (agent, entity) = (nonempty(q.agent), nonempty(q.entity));
    let (status, body) = match (agent, entity) {
        (Some(agent), entity) => {
            if !admits("get", "/v1/agents/{agentId}/usage", who.role) {
                return forbidden(&who);
            }
            let r = super::get_usage(
                State(state.clone()),
                Ok(axum::extract::Path(agent.clone())),
                Ok(Query(super::UsageQuery { entity })),
            )
            .await;
            match r {
                Err(e) => (e.status(), error_section(&e)),
                Ok(Json(v)) => {
                    let mut bars = String::new();
                    for w in &v.windows {
                        if let Some(cap) = &w.cap {
                            // Reserved money counts against the cap like spent money.
                            let taken = w.spent.parse::<Decimal>().ok().and_then(|s| {
                                Some(crate::money::format_amount(
                                    s + w.reserved.parse::<Decimal>().ok()?,
                                    crate::money::currency(&v.currency)
                                        .map_or(2, |c| c.minor_units),
                                ))
                            });
                            let label = format!("{} cap ({})", w.window, w.period);
                            bars.push_str(&bar(
                                &label,
                                taken.as_deref().unwrap_or(&w.spent),
                                cap,
                                &v.currency,
                            ));
                        }
                    }
                    bars.push_str(&limit_bars(&v.limits, &v.currency));
                    (
                        StatusCode::OK,
                        format!(
                            r#"<section id="usage"><h2>Agent {} of entity {}</h2><p>Policy {} {} · {} · {}</p>{bars}</section>"#,
                            escape(&v.agent_id),
                            escape(&v.entity_id),
                            escape(&v.policy.name),
                            escape(&v.policy.version),
                            escape(&v.currency),
                            escape(&v.timezone),
                        ),
                    )
                }
            }
        }
        (None, Some(entity)) => {
            if !admits("get", "/v1/entities/{entityId}/usage", who.role) {
                return forbidden(&who);
            }
            let r = super::get_entity_usage(
                State(state.clone()),
                Ok(axum::extract::Path(entity.clone())),
            )
            .await;
            match r {
                Err(e) => (e.status(), error_section(&e)),
                Ok(Json(v)) => {
                    let mut body = format!(
                        r#"<section id="usage"><h2>Entity {}</h2>"#,
                        escape(&v.entity_id)
                    );
                    for p in &v.policies {
                        body.push_str(&format!(
                            "<h3>Policy {} {} · {}</h3>",
                            escape(&p.policy.name),
                            escape(&p.policy.version),
                            escape(&p.currency)
                        ));
                        body.push_str(&limit_bars(&p.limits, &p.currency));
                    }
                    if v.policies.is_empty() {
                        body.push_str(r#"<p class="empty">No entity-scoped limit applies.</p>"#);
                    }
                    body.push_str("</section>");
                    (StatusCode::OK, body)
                }
            }
        }
        (None, None) => (StatusCode::OK, usage_form(&who)),
    };
    html(status, page("usage", Some(&who), &body))
}

fn forbidden(who: &Principal) -> Response {
    html(
        StatusCode::FORBIDDEN,
        page(
            "forbidden",
            Some(who),
            &format!(
                r#"<p class="error">The role {} may not see this.</p>"#,
                who.role.as_str()
            ),
        ),
    )
}

#[derive(Debug, Deserialize)]
struct KillSwitchForm {
    scope: String,
    reason: String,
    action: String,
}

async fn kill_switch(
    State(state): State<ApiState>,
    headers: HeaderMap,
    form: Result<Form<KillSwitchForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(who) = principal(&state, &headers) else {
        return login_page(StatusCode::UNAUTHORIZED, "");
    };
    if !admits("post", "/v1/kill-switch", who.role) {
        return forbidden(&who);
    }
    let fail = |status: StatusCode, message: String| {
        html(
            status,
            page(
                "kill switch",
                Some(&who),
                &format!(
                    r#"<p class="error">{}</p><p><a href="/console">back</a></p>"#,
                    escape(&message)
                ),
            ),
        )
    };
    if !same_origin(&headers) {
        return fail(
            StatusCode::FORBIDDEN,
            "cross-site request refused: use the console's own form".into(),
        );
    }
    let Ok(Form(form)) = form else {
        return fail(
            StatusCode::BAD_REQUEST,
            "the form needs scope, reason and action".into(),
        );
    };
    let on = match form.action.as_str() {
        "trip" => true,
        "clear" => false,
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                "action must be trip or clear".into(),
            );
        }
    };
    let scope = match form.scope.trim().parse::<crate::kill_switch::Scope>() {
        Ok(s) => s,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let request = KillSwitchRequest {
        scope,
        on,
        reason: form.reason,
    };
    match super::post_kill_switch(
        State(state),
        Extension(who.clone()),
        super::JsonBody(request),
    )
    .await
    {
        Ok(_) => (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, HeaderValue::from_static("/console"))],
        )
            .into_response(),
        Err(e) => fail(e.status(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        let hostile = r#"<script>alert('x')</script>" onmouseover="x" &amp;"#;
        let out = escape(hostile);
        assert_eq!(
            out,
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot; onmouseover=&quot;x&quot; &amp;amp;"
        );
        for c in ['<', '>', '"', '\''] {
            assert!(!out.contains(c), "{c} survived in {out}");
        }
    }

    #[test]
    fn url_component_keeps_ids_inside_the_parameter() {
        assert_eq!(url_component("a&b=c d/é"), "a%26b%3Dc%20d%2F%C3%A9");
        assert_eq!(url_component("agent-1_x.y~"), "agent-1_x.y~");
    }

    #[test]
    fn bar_percent_is_decimal_and_clamped() {
        assert_eq!(bar_percent("50.00", "200.00"), Some(25));
        assert_eq!(bar_percent("0.01", "3.00"), Some(0));
        assert_eq!(bar_percent("2.00", "3.00"), Some(67));
        assert_eq!(bar_percent("900.00", "500.00"), Some(100));
        assert_eq!(bar_percent("-5", "10"), Some(0));
        assert_eq!(bar_percent("1", "0"), None);
        assert_eq!(bar_percent("x", "10"), None);
    }

    #[test]
    fn cookie_token_round_trips_any_token() {
        let token = "tok; en=with,odd chars";
        let mut headers = HeaderMap::new();
        let value = format!("other=1; {COOKIE}={}", hex::encode(token));
        headers.insert(header::COOKIE, HeaderValue::from_str(&value).unwrap());
        assert_eq!(cookie_token(&headers).as_deref(), Some(token));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("spendguard_console=zz"),
        );
        assert_eq!(cookie_token(&headers), None);
    }

    #[test]
    fn same_origin_refuses_another_site() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_static("console.example:8080"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://console.example:8080"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers));
    }
}
