//! The operation table — the single source of the routes, their roles and their shapes —
//! and the OpenAPI 3.1 document generated from it (schemas from the Rust types via
//! `schemars`, so a changed field changes the document).

use axum::routing::MethodRouter;
use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use super::ApiState;
use super::auth::Role;
use super::error::ErrorBody;
use super::views::*;

/// What a 200 response carries.
#[derive(Clone, Copy)]
pub enum Body {
    /// JSON of the type whose schema the function returns.
    Json(fn(&mut SchemaGenerator) -> schemars::Schema),
    /// Prometheus text exposition format.
    PrometheusText,
    /// An arbitrary JSON object (the OpenAPI document itself).
    AnyJson,
}

/// A query or path parameter.
#[derive(Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub location: &'static str,
    pub required: bool,
    pub description: &'static str,
    /// JSON Schema type: `string` or `integer`.
    pub kind: &'static str,
}

/// One route.
pub struct Operation {
    /// Lower-case HTTP method.
    pub method: &'static str,
    /// axum / OpenAPI path template (`{name}` parameters).
    pub path: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    /// Roles admitted; empty = no token needed.
    pub roles: &'static [Role],
    pub params: &'static [Param],
    pub request: Option<fn(&mut SchemaGenerator) -> schemars::Schema>,
    pub response: Body,
    /// Error statuses besides 401/403 (which follow from `roles`).
    pub errors: &'static [u16],
    pub handler: fn() -> MethodRouter<ApiState>,
}

const ANY_ROLE: &[Role] = &[Role::Reader, Role::Operator, Role::Auditor];
const STAFF: &[Role] = &[Role::Operator, Role::Auditor];
const OPERATOR: &[Role] = &[Role::Operator];
const PAYMENT_SERVICE: &[Role] = &[Role::PaymentService];
const APPROVER: &[Role] = &[Role::Approver];
const STAFF_AND_APPROVER: &[Role] = &[Role::Operator, Role::Auditor, Role::Approver];

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

pub static OPERATIONS: &[Operation] = &[
    Operation {
        method: "get",
        path: "/healthz",
        operation_id: "healthz",
        summary: "Liveness: the process answers.",
        roles: &[],
        params: &[],
        request: None,
        response: Body::Json(schema::<Health>),
        errors: &[],
        handler: super::route_healthz,
    },
    Operation {
        method: "get",
        path: "/readyz",
        operation_id: "readyz",
        summary: "Readiness: PostgreSQL and the broker answer and partitions are assigned (503 otherwise, same body).",
        roles: &[],
        params: &[],
        request: None,
        response: Body::Json(schema::<Readiness>),
        errors: &[503],
        handler: super::route_readyz,
    },
    Operation {
        method: "get",
        path: "/metrics",
        operation_id: "metrics",
        summary: "Prometheus metrics (text exposition format).",
        roles: STAFF,
        params: &[],
        request: None,
        response: Body::PrometheusText,
        errors: &[],
        handler: super::route_metrics,
    },
    Operation {
        method: "get",
        path: "/openapi.json",
        operation_id: "openapi",
        summary: "This document.",
        roles: &[],
        params: &[],
        request: None,
        response: Body::AnyJson,
        errors: &[],
        handler: super::route_openapi,
    },
    Operation {
        method: "get",
        path: "/v1/decisions/{intentId}",
        operation_id: "getDecision",
        summary: "A recorded decision with all reasons, the votes received, the outcome, and what became of the money it authorized (`authorization`: authorized, captured, voided, refunded, outstanding, final, expired, expiresAt).",
        roles: ANY_ROLE,
        params: &[Param {
            name: "intentId",
            location: "path",
            required: true,
            description: "The intent's idempotency key.",
            kind: "string",
        }],
        request: None,
        response: Body::Json(schema::<DecisionView>),
        errors: &[400, 404],
        handler: super::route_decision,
    },
    Operation {
        method: "get",
        path: "/v1/agents/{agentId}/usage",
        operation_id: "getAgentUsage",
        summary: "The agent's current day and month windows: spent (outstanding authorizations + captured − restored refunds), reserved, remaining, reset instant, in the policy's currency and timezone; and every limit of its policy (SPEC §12: agent- and entity-scoped) with used, remaining and resetsAt (calendar) or freesNextAt (trailing), at the ledger's clock.",
        roles: ANY_ROLE,
        params: &[
            Param {
                name: "agentId",
                location: "path",
                required: true,
                description: "The agent.",
                kind: "string",
            },
            Param {
                name: "entity",
                location: "query",
                required: false,
                description: "Entity to resolve the policy binding for (default: the entity of the agent's last intent).",
                kind: "string",
            },
        ],
        request: None,
        response: Body::Json(schema::<AgentUsageView>),
        errors: &[400, 404],
        handler: super::route_usage,
    },
    Operation {
        method: "get",
        path: "/v1/entities/{entityId}/usage",
        operation_id: "getEntityUsage",
        summary: "The entity-scoped limits (SPEC §12) of every policy bound to the entity — its own binding (entity pattern, else default), then those of the agents the ledger has seen under it — with used, remaining and resetsAt (calendar) or freesNextAt (trailing), at the ledger's clock.",
        roles: ANY_ROLE,
        params: &[Param {
            name: "entityId",
            location: "path",
            required: true,
            description: "The entity.",
            kind: "string",
        }],
        request: None,
        response: Body::Json(schema::<EntityUsageView>),
        errors: &[400, 404],
        handler: super::route_entity_usage,
    },
    Operation {
        method: "get",
        path: "/v1/approvals",
        operation_id: "listPendingApprovals",
        summary: "Intents waiting for approval (HITL / MSIG), oldest first, each with its reasons, the usage it was decided with, `expiresAt`, `decisionHash`, the approvals so far and the decision message (`decision`) to sign. An `approver` token sees only the intents its approverId may still vote on: entities its registry entry lists, never an agent of its own id, none it voted on already.",
        roles: STAFF_AND_APPROVER,
        params: &[
            Param {
                name: "status",
                location: "query",
                required: false,
                description: "Only `pending` is supported (the default).",
                kind: "string",
            },
            Param {
                name: "limit",
                location: "query",
                required: false,
                description: "Page size, 1..=500 (default 100).",
                kind: "integer",
            },
        ],
        request: None,
        response: Body::Json(schema::<PendingApprovals>),
        errors: &[400],
        handler: super::route_approvals,
    },
    Operation {
        method: "post",
        path: "/v1/approvals/{intentId}/votes",
        operation_id: "voteOnApproval",
        summary: "Submit a signed vote (SPEC §4, §13.1): the same message as on `spend.approvals`, verified and audited like a Kafka vote. The token must be bound to the vote's approverId, and the body's intentId must be the path's; the bearer token alone approves nothing: the Ed25519 signature over `spendguard.approval.v2`, intentId, decisionHash, vote, approverId and signedAt must verify with the registry's key, and signedAt be within 10 minutes of the ledger's clock. A refused vote is audited and answered 422 with its code (`bad_signature`, `signature_format_outdated`, `stale_signature`, `approver_token_mismatch`, `approver_not_registered_for_entity`, `self_approval`, `duplicate_approver`, `already_closed`, `expired`, `malformed_vote`, ...).",
        roles: APPROVER,
        params: &[Param {
            name: "intentId",
            location: "path",
            required: true,
            description: "The waiting intent voted on.",
            kind: "string",
        }],
        request: Some(schema::<super::views::VoteBody>),
        response: Body::Json(schema::<VoteAcceptedView>),
        errors: &[400, 413, 422, 503],
        handler: super::approvals::route_votes_post,
    },
    Operation {
        method: "get",
        path: "/v1/notifications",
        operation_id: "listNotifications",
        summary: "Recent webhook deliveries (SPEC §13.2), newest first: webhook, event, ledgerSeq, state (`pending`, `delivered`, `failed` = given up after the last attempt), attempts, next attempt, last error and HTTP status. Delivered and failed rows are kept 7 days.",
        roles: STAFF,
        params: &[
            Param {
                name: "state",
                location: "query",
                required: false,
                description: "`pending`, `delivered` or `failed` (default: all).",
                kind: "string",
            },
            Param {
                name: "limit",
                location: "query",
                required: false,
                description: "Page size, 1..=500 (default 100).",
                kind: "integer",
            },
        ],
        request: None,
        response: Body::Json(schema::<super::notifications::Notifications>),
        errors: &[400],
        handler: super::notifications::route,
    },
    Operation {
        method: "get",
        path: "/v1/kill-switch",
        operation_id: "getKillSwitch",
        summary: "Tripped kill-switch scopes with actor, reason and since when.",
        roles: ANY_ROLE,
        params: &[],
        request: None,
        response: Body::Json(schema::<KillSwitchStatus>),
        errors: &[],
        handler: super::route_kill_switch_get,
    },
    Operation {
        method: "post",
        path: "/v1/kill-switch",
        operation_id: "setKillSwitch",
        summary: "Trip or clear the kill switch for a scope; recorded in the ledger with the token's name as actor and propagated to every instance.",
        roles: OPERATOR,
        params: &[],
        request: Some(schema::<KillSwitchRequest>),
        response: Body::Json(schema::<KillSwitchScopeView>),
        errors: &[400, 413, 415],
        handler: super::route_kill_switch_post,
    },
    Operation {
        method: "get",
        path: "/v1/fx-rates",
        operation_id: "listFxRates",
        summary: "The latest exchange rate of every currency pair (SPEC §12.3), by pair: rate (QUOTE per one BASE, a decimal string), when it was set and the ledgerSeq of its `fx_rate_set` event (decisions converted at it name that seq in their `currency_converted` reason).",
        roles: ANY_ROLE,
        params: &[],
        request: None,
        response: Body::Json(schema::<FxRates>),
        errors: &[],
        handler: super::route_fx_rates_get,
    },
    Operation {
        method: "post",
        path: "/v1/fx-rates",
        operation_id: "setFxRate",
        summary: "Record an exchange rate (SPEC §12.3) as an audited `fx_rate_set` ledger event with actor `api:<token name>`: intents in BASE accepted after it are converted into QUOTE at this rate. The rate is a decimal string (JSON numbers are refused), positive, at most 12 significant digits; the reason is required.",
        roles: OPERATOR,
        params: &[],
        request: Some(schema::<FxRateRequest>),
        response: Body::Json(schema::<FxRateSetView>),
        errors: &[400, 413, 415],
        handler: super::route_fx_rates_post,
    },
    Operation {
        method: "post",
        path: "/v1/intents",
        operation_id: "decideIntent",
        summary: "Decide a spend intent synchronously (SPEC §13.4). The body is a §1 intent, judged by the same parser as `spend.intents` and decided in the same ledger transaction as a Kafka intent; the answer is the decision message exactly as published on `spend.decisions` (which still happens, through the outbox). Idempotent by intentId: a retry gets the recorded decision with header `Idempotent-Replayed: true`. An invalid body is audited (`intent_invalid`) and answered 400 with the Kafka intake's code (`missing_field`, `invalid_amount`, ..., `field` naming the field); the same intentId with another payload is 409 `idempotency_conflict` (audited). Bodies up to 64 KiB are read (over 16 KiB: 400 `message_too_large`); larger ones 413.",
        roles: PAYMENT_SERVICE,
        params: &[],
        request: Some(schema::<super::intake::IntentBody>),
        response: Body::AnyJson,
        errors: &[400, 409, 413, 503],
        handler: super::intake::route_intents_post,
    },
    Operation {
        method: "post",
        path: "/v1/settlements",
        operation_id: "settle",
        summary: "Apply a settlement synchronously (SPEC §11, §13.4): same parser and ledger transaction as `spend.settlements`; the answer is the outcome message as published on `spend.decisions` (CAPTURED, VOIDED, REFUNDED, CANCELLED with the authorization's totals). Idempotent by settlementId (`Idempotent-Replayed: true` on a retry). Invalid body: 400 with the parser's code, audited (`settlement_refused`); refused by the ledger (audited): 422 with its stable code (`unknown_intent`, `not_authorized`, `over_remainder`, `currency_mismatch`, `already_final`, ...), or 409 `idempotency_conflict`.",
        roles: PAYMENT_SERVICE,
        params: &[],
        request: Some(schema::<super::intake::SettlementBody>),
        response: Body::AnyJson,
        errors: &[400, 409, 413, 422, 503],
        handler: super::intake::route_settlements_post,
    },
    Operation {
        method: "get",
        path: "/v1/policies",
        operation_id: "listPolicies",
        summary: "The active policy set with identities (name, version, SHA-256).",
        roles: STAFF,
        params: &[],
        request: None,
        response: Body::Json(schema::<ActivePolicies>),
        errors: &[],
        handler: super::route_policies,
    },
    Operation {
        method: "get",
        path: "/v1/policies/{name}/history",
        operation_id: "policyHistory",
        summary: "Every activation of a policy recorded in the ledger (SPEC §16), oldest first: revision (1, 2, ... per name), ledgerSeq, time, version, sha256, actor, source, and for a rollback the revision it restored and why. As `spendguard policy history NAME --json`.",
        roles: STAFF,
        params: &[Param {
            name: "name",
            location: "path",
            required: true,
            description: "Policy name.",
            kind: "string",
        }],
        request: None,
        response: Body::Json(schema::<super::policy_lifecycle::PolicyHistoryView>),
        errors: &[404],
        handler: super::policy_lifecycle::route_history,
    },
    Operation {
        method: "get",
        path: "/v1/policies/{name}/diff",
        operation_id: "policyDiff",
        summary: "How two recorded revisions of a policy differ: a line diff of their canonical contents (one field per line; changed lines with two lines of context), as `spendguard policy diff NAME FROM TO` prints it. `from` and `to` are revision numbers or a version label carried by one content.",
        roles: STAFF,
        params: &[
            Param {
                name: "name",
                location: "path",
                required: true,
                description: "Policy name.",
                kind: "string",
            },
            Param {
                name: "from",
                location: "query",
                required: true,
                description: "Revision number or version label.",
                kind: "string",
            },
            Param {
                name: "to",
                location: "query",
                required: true,
                description: "Revision number or version label.",
                kind: "string",
            },
        ],
        request: None,
        response: Body::Json(schema::<super::policy_lifecycle::PolicyDiffView>),
        errors: &[400, 404],
        handler: super::policy_lifecycle::route_diff,
    },
    Operation {
        method: "post",
        path: "/v1/policies/{name}/rollback",
        operation_id: "rollbackPolicy",
        summary: "Activate an earlier revision's content again as a new revision (SPEC §16): recorded as an audited `policy_activated` event (actor `api:<token name>`, the revision restored, the reason) under the global chain's lock, then written into the policy's file in the service's policies directory, which the watcher loads at its next poll. 409 `already_active` when that content is the latest revision; 503 when the directory does not load (nothing is recorded). As `spendguard policy rollback`.",
        roles: OPERATOR,
        params: &[Param {
            name: "name",
            location: "path",
            required: true,
            description: "Policy name.",
            kind: "string",
        }],
        request: Some(schema::<super::policy_lifecycle::RollbackRequest>),
        response: Body::Json(schema::<super::policy_lifecycle::RollbackView>),
        errors: &[400, 404, 409, 413, 415, 503],
        handler: super::policy_lifecycle::route_rollback,
    },
];

fn status_text(status: u16) -> &'static str {
    match status {
        400 => {
            "Invalid request (code `invalid_request`, or the intake parser's code on the intake routes)."
        }
        401 => "Missing or unknown bearer token (code `unauthorized`).",
        403 => "The token's role may not use this route (code `forbidden`).",
        404 => "Unknown id (code `not_found`).",
        409 => "The id was recorded with another payload (code `idempotency_conflict`, audited).",
        422 => "Refused by the ledger with a stable code (audited).",
        413 => "Body larger than the limit (code `payload_too_large`).",
        415 => "Body is not JSON (code `unsupported_media_type`).",
        503 => "Not ready, or the ledger did not answer in time (code `unavailable`): retry.",
        _ => "Error.",
    }
}

/// The OpenAPI 3.1 document of [`OPERATIONS`].
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = SchemaGenerator::new(settings);
    let error_schema = generator.subschema_for::<ErrorBody>();

    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut responses = Map::new();
        let ok = match op.response {
            Body::Json(f) => {
                json!({"description": "OK", "content": {"application/json": {"schema": f(&mut generator)}}})
            }
            Body::PrometheusText => {
                json!({"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}})
            }
            Body::AnyJson => {
                json!({"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}})
            }
        };
        responses.insert("200".into(), ok);
        let mut statuses: Vec<u16> = op.errors.to_vec();
        if !op.roles.is_empty() {
            statuses.push(401);
            if op.roles.len() < Role::ALL.len() {
                statuses.push(403);
            }
        }
        statuses.sort_unstable();
        for status in statuses {
            let schema = if status == 503 && op.operation_id == "readyz" {
                generator.subschema_for::<Readiness>()
            } else {
                error_schema.clone()
            };
            responses.insert(
                status.to_string(),
                json!({"description": status_text(status), "content": {"application/json": {"schema": schema}}}),
            );
        }
        let mut operation = json!({
            "operationId": op.operation_id,
            "summary": op.summary,
            "responses": responses,
            "x-roles": op.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        });
        let obj = operation.as_object_mut().expect("built as an object above");
        if op.roles.is_empty() {
            obj.insert("security".into(), json!([]));
        }
        if !op.params.is_empty() {
            let params: Vec<Value> = op
                .params
                .iter()
                .map(|p| {
                    json!({"name": p.name, "in": p.location, "required": p.required,
                           "description": p.description, "schema": {"type": p.kind}})
                })
                .collect();
            obj.insert("parameters".into(), Value::Array(params));
        }
        if let Some(f) = op.request {
            obj.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": f(&mut generator)}}}),
            );
        }
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        if let Some(map) = entry.as_object_mut() {
            map.insert(op.method.to_string(), operation);
        }
    }

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "spendguard operators' and auditors' API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Bearer tokens carry one role: reader, operator, auditor, payment_service or approver (bound to one approverId of the registry). `x-roles` lists the roles each operation admits. Errors are `{\"error\": {\"code\", \"message\"}}` with stable codes."
        },
        "paths": paths,
        "components": {
            "schemas": generator.take_definitions(true),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document resolves to a component schema.
    #[test]
    fn refs_resolve_and_every_operation_is_described() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        fn walk(v: &Value, refs: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        refs.push(r.clone());
                    }
                    m.values().for_each(|x| walk(x, refs));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, refs)),
                _ => {}
            }
        }
        let mut refs = Vec::new();
        walk(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("odd ref {r}"));
            assert!(schemas.contains_key(name), "dangling {r}");
        }
        for op in OPERATIONS {
            let o = &doc["paths"][op.path][op.method];
            assert_eq!(o["operationId"], op.operation_id);
            assert!(o["responses"]["200"].is_object());
            assert_eq!(
                o["responses"]["401"].is_object(),
                !op.roles.is_empty(),
                "{}",
                op.path
            );
            // Path parameters in the template are declared, and vice versa.
            let declared: Vec<&str> = op
                .params
                .iter()
                .filter(|p| p.location == "path")
                .map(|p| p.name)
                .collect();
            let in_template: Vec<&str> = op
                .path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            assert_eq!(declared, in_template, "{}", op.path);
        }
        let ids: std::collections::BTreeSet<_> =
            OPERATIONS.iter().map(|o| o.operation_id).collect();
        assert_eq!(ids.len(), OPERATIONS.len());
        assert!(schemas.contains_key("DecisionView"));
        assert!(schemas.contains_key("ErrorBody"));
    }
}
