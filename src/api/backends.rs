//! The API's traits implemented over the real parts: the PostgreSQL [`Ledger`], the
//! active [`PolicySet`] (whatever holds it: `ArcSwap`, a plain `Arc`) and a readiness
//! probe. `spendguard serve` builds an [`ApiState`] from these with [`state_for`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::future::BoxFuture;

use super::views::*;
use super::*;
use crate::kill_switch;
use crate::ledger::authorization::AuthorizationState;
use crate::ledger::query::LedgerReader;
use crate::ledger::{Ledger, LedgerError, Origin};
use crate::policy::PolicySet;
use crate::report::events::DecidedView;

/// How long a readiness probe waits for PostgreSQL.
pub const READINESS_TIMEOUT_MS: u64 = 2_000;

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("ledger query failed: {e}"))
}

/// [`db`] for the read side's errors, worded as before (the database's own error).
fn read(e: LedgerError) -> StoreError {
    match e {
        LedgerError::Database(e) => db(e),
        e => db(e),
    }
}

/// Ledger reads for the API.
pub struct LedgerBackend {
    pub ledger: Arc<Ledger>,
}

impl LedgerBackend {
    fn reader(&self) -> LedgerReader {
        self.ledger.reader()
    }

    async fn decision_view(&self, intent_id: &str) -> Result<Option<DecisionView>, StoreError> {
        let Some(record) = self.ledger.decision(intent_id).await.map_err(db)? else {
            return Ok(None);
        };
        let m = &record.message;
        // The intent's facts (amount, category, ...) live in the decided event; the
        // decision message carries only the verdict.
        let payload: Option<String> = match m.ledger_seq {
            Some(seq) => self.reader().event_payload(seq).await.map_err(read)?,
            None => None,
        };
        let facts = payload
            .and_then(|p| serde_json::from_str::<DecidedView>(&p).ok())
            .and_then(|v| v.facts());
        let mut votes: Vec<VoteView> = record
            .votes
            .iter()
            .map(|v| VoteView {
                approver_id: v.approver_id.clone(),
                vote: v.vote.as_str().to_string(),
                accepted: true,
                refused_reason: None,
                recorded_at: v.signed_at,
            })
            .collect();
        let refused = self.reader().refused_votes(intent_id).await.map_err(read)?;
        for r in refused {
            let at: DateTime<Utc> = r.recorded_at;
            let v: serde_json::Value = serde_json::from_str(&r.payload).unwrap_or_default();
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            votes.push(VoteView {
                approver_id: s("approverId").unwrap_or_else(|| "unknown".into()),
                vote: s("vote").unwrap_or_default(),
                accepted: false,
                refused_reason: s("reason"),
                recorded_at: at,
            });
        }
        let minor = facts
            .as_ref()
            .and_then(|f| crate::money::currency(&f.currency))
            .map_or(2, |c| c.minor_units);
        let authorization = self
            .ledger
            .authorization(intent_id)
            .await
            .map_err(read)?
            .map(|a| authorization_view(&a.state));
        Ok(Some(DecisionView {
            intent_id: m.intent_id.clone(),
            agent_id: m.agent_id.clone(),
            entity_id: m.entity_id.clone(),
            amount: facts
                .as_ref()
                .map(|f| crate::money::format_amount(f.amount, minor))
                .unwrap_or_default(),
            currency: facts
                .as_ref()
                .map(|f| f.currency.clone())
                .unwrap_or_default(),
            category: facts
                .as_ref()
                .map(|f| f.category.clone())
                .unwrap_or_default(),
            purpose: facts
                .as_ref()
                .map(|f| f.purpose.clone())
                .unwrap_or_default(),
            effect: m.effect,
            approvals_required: m.approvals_required,
            reasons: m
                .reasons
                .iter()
                .map(|r| ReasonView {
                    effect: r.effect,
                    code: r.code.to_string(),
                    detail: r.detail.to_string(),
                })
                .collect(),
            policy: m.policy.clone(),
            usage: m.usage.as_ref().map(|u| DecisionUsageView {
                daily_so_far: crate::money::format_amount(u.daily_so_far, minor),
                monthly_so_far: crate::money::format_amount(u.monthly_so_far, minor),
                day: u.window.day.to_string(),
                tz: u.window.tz.clone(),
            }),
            decided_at: m.decided_at,
            ledger_seq: m.ledger_seq.unwrap_or_default(),
            votes,
            outcome: record.outcome.as_ref().map(|o| OutcomeView {
                outcome: o.outcome.as_str().to_string(),
                approvers: o.approvers.clone(),
                recorded_at: o.closed_at,
            }),
            authorization,
        }))
    }
}

/// The API view of an authorization: [`AuthorizationState::totals`] in the
/// authorization's currency scale.
pub fn authorization_view(state: &AuthorizationState) -> AuthorizationView {
    let minor = crate::money::currency(&state.currency).map_or(2, |c| c.minor_units);
    let fmt = |d| crate::money::format_amount(d, minor);
    let t = state.totals();
    AuthorizationView {
        authorized: fmt(t.authorized),
        captured: fmt(t.captured),
        voided: fmt(t.voided),
        refunded: fmt(t.refunded),
        outstanding: fmt(t.outstanding),
        is_final: t.is_final,
        expired: t.expired,
        expires_at: t.expires_at,
    }
}

impl LedgerQueries for LedgerBackend {
    fn notifications(
        &self,
        state: Option<String>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<super::notifications::DeliveryView>, StoreError>> {
        Box::pin(async move {
            self.ledger
                .notification_deliveries(state.as_deref(), i64::try_from(limit).unwrap_or(1))
                .await
                .map_err(read)
        })
    }

    fn decision<'a>(
        &'a self,
        intent_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<DecisionView>, StoreError>> {
        Box::pin(self.decision_view(intent_id))
    }

    fn agent_entity<'a>(
        &'a self,
        agent_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move { self.reader().latest_entity_of(agent_id).await.map_err(read) })
    }

    fn window_amounts<'a>(
        &'a self,
        agent_id: &'a str,
        windows: Windows,
        tz: Tz,
        currency: &'a str,
    ) -> BoxFuture<'a, Result<WindowAmounts, StoreError>> {
        Box::pin(async move {
            let t = self
                .reader()
                .usage_totals(agent_id, windows, tz, currency)
                .await
                .map_err(read)?;
            Ok(WindowAmounts {
                daily_spent: t.daily_committed,
                daily_reserved: t.daily_reserved,
                monthly_spent: t.monthly_committed,
                monthly_reserved: t.monthly_reserved,
            })
        })
    }

    fn limit_usage(
        &self,
        policy: Arc<crate::policy::CompiledPolicy>,
        agent_id: Option<String>,
        entity_id: String,
    ) -> BoxFuture<'_, Result<crate::ledger::limit_usage::LimitUsageReport, StoreError>> {
        Box::pin(async move {
            self.reader()
                .limit_usage(&policy, agent_id.as_deref(), &entity_id)
                .await
                .map_err(read)
        })
    }

    fn entity_agents<'a>(
        &'a self,
        entity_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move { self.reader().entity_agents(entity_id).await.map_err(read) })
    }

    fn recent_decisions(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<DecisionView>, StoreError>> {
        Box::pin(async move {
            let ids = self
                .reader()
                .recent_decision_ids(limit)
                .await
                .map_err(read)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(view) = self.decision_view(&id).await? {
                    out.push(view);
                }
            }
            Ok(out)
        })
    }

    fn pending_approvals(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<PendingApprovalView>, StoreError>> {
        Box::pin(async move {
            let rows = self.reader().pending_approvals(limit).await.map_err(read)?;
            Ok(rows
                .into_iter()
                .map(super::approvals::pending_view)
                .collect())
        })
    }
}

/// Kill switch through [`kill_switch::record_then_announce`], the operation the CLI uses
/// too: the audited ledger event first, then the control message.
pub struct LedgerKillSwitch {
    pub ledger: Arc<Ledger>,
    /// Recorded as the event's origin instance.
    pub instance: String,
    /// Where changes are announced (`serve`: its producer and `spend.control`); `None`
    /// records only, and instances pick the change up at their next ledger re-read.
    pub announcer: Option<kill_switch::Announcer>,
}

impl KillSwitchControl for LedgerKillSwitch {
    fn status(&self) -> BoxFuture<'_, Result<KillSwitchStatus, StoreError>> {
        Box::pin(async move {
            let entries = self.ledger.kill_switch_state().await.map_err(db)?;
            Ok(KillSwitchStatus {
                active: entries
                    .into_iter()
                    .filter(|e| e.active)
                    .map(|e| KillSwitchScopeView {
                        scope: e.scope,
                        on: e.active,
                        actor: e.actor,
                        reason: e.reason,
                        since: e.changed_at,
                    })
                    .collect(),
            })
        })
    }

    fn set(
        &self,
        change: KillSwitchChange,
    ) -> BoxFuture<'_, Result<KillSwitchScopeView, StoreError>> {
        Box::pin(async move {
            let origin = Origin {
                instance: self.instance.clone(),
                source: "api".into(),
                partition: None,
                offset: None,
            };
            kill_switch::record_then_announce(
                &self.ledger,
                &change,
                &origin,
                self.announcer.as_ref(),
            )
            .await
            .map_err(|e| match e {
                kill_switch::ChangeError::Record(e) => {
                    StoreError::Other(format!("recording the kill-switch change failed: {e:#}"))
                }
                kill_switch::ChangeError::Announce(e) => StoreError::Unavailable(format!(
                    "the change is recorded in the ledger but could not be propagated to the other instances ({e:#}); they pick it up at their next ledger resync"
                )),
            })?;
            let entries = self.ledger.kill_switch_state().await.map_err(db)?;
            let scope = change.scope.to_string();
            let current = entries.into_iter().find(|e| e.scope == scope);
            Ok(match current {
                Some(e) => KillSwitchScopeView {
                    scope: e.scope,
                    on: e.active,
                    actor: e.actor,
                    reason: e.reason,
                    since: e.changed_at,
                },
                // Nothing changed (already in that state): the answer echoes the request,
                // masked like what is recorded (SPEC §14).
                None => KillSwitchScopeView {
                    scope,
                    on: change.on,
                    actor: crate::privacy::mask_pans(&change.actor),
                    reason: crate::privacy::mask_pans(&change.reason),
                    since: Utc::now(),
                },
            })
        })
    }
}

/// Exchange rates over the ledger: `set` is [`Ledger::set_fx_rate`] (the operation
/// `spendguard fx set` runs), `rates` reads the `fx_rate` projection.
pub struct LedgerFxRates {
    pub ledger: Arc<Ledger>,
    /// Recorded as the event's origin instance.
    pub instance: String,
}

impl FxRateControl for LedgerFxRates {
    fn rates(&self) -> BoxFuture<'_, Result<Vec<FxRateView>, StoreError>> {
        Box::pin(async move {
            let rows = self.ledger.reader().fx_rates().await.map_err(read)?;
            Ok(rows
                .into_iter()
                .map(|r| FxRateView {
                    pair: r.pair,
                    rate: r.rate.to_string(),
                    set_at: r.set_at,
                    ledger_seq: r.seq,
                })
                .collect())
        })
    }

    fn set(&self, change: FxRateChange) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(async move {
            let origin = Origin {
                instance: self.instance.clone(),
                source: "api".into(),
                partition: None,
                offset: None,
            };
            let r = change.rate;
            self.ledger
                .set_fx_rate(
                    r.base.code,
                    r.quote.code,
                    r.rate,
                    &change.actor,
                    &change.reason,
                    &origin,
                )
                .await
                .map_err(|e| {
                    // Transient or a fault of the deployment: 503, retry later.
                    if e.fault().is_retried_without_end() {
                        db(e)
                    } else {
                        StoreError::Other(format!("recording the exchange rate failed: {e}"))
                    }
                })
        })
    }
}

/// The active policy set, read through a function (so it works over an `ArcSwap` held by
/// the service: `PolicySource(move || shared.policies.load_full())`).
pub struct PolicySource<F>(pub F);

impl<F> PolicyCatalog for PolicySource<F>
where
    F: Fn() -> Arc<PolicySet> + Send + Sync + 'static,
{
    fn active(&self) -> Vec<PolicyView> {
        (self.0)()
            .policies()
            .map(|p| PolicyView {
                name: p.identity.name.clone(),
                version: p.identity.version.clone(),
                sha256: p.identity.sha256.clone(),
                currency: p.currency.code.to_string(),
                timezone: p.tz.name().to_string(),
            })
            .collect()
    }

    fn limits_for(&self, agent_id: &str, entity_id: &str) -> Option<PolicyLimits> {
        let p = (self.0)().resolve(agent_id, entity_id)?;
        Some(PolicyLimits {
            identity: p.identity.clone(),
            currency: p.currency,
            tz: p.tz,
            daily_cap: Some(p.daily),
            monthly_cap: Some(p.monthly),
        })
    }

    fn policy_for(
        &self,
        agent_id: &str,
        entity_id: &str,
    ) -> Option<Arc<crate::policy::CompiledPolicy>> {
        (self.0)().resolve(agent_id, entity_id)
    }

    fn entity_policies(
        &self,
        entity_id: &str,
        agents: &[String],
    ) -> Vec<Arc<crate::policy::CompiledPolicy>> {
        (self.0)().entity_policies(entity_id, agents)
    }
}

/// A readiness check the service supplies (broker reachable, partitions assigned).
pub type ExtraCheck = Arc<dyn Fn() -> BoxFuture<'static, ReadinessCheck> + Send + Sync>;

/// PostgreSQL answers `SELECT 1` ([`LedgerReader::ping`]) within
/// [`READINESS_TIMEOUT_MS`], plus the service's checks.
pub struct Readiness {
    pub ledger: LedgerReader,
    pub extra: Vec<ExtraCheck>,
}

impl ReadinessProbe for Readiness {
    fn check(&self) -> BoxFuture<'_, Vec<ReadinessCheck>> {
        Box::pin(async move {
            let pg = tokio::time::timeout(
                Duration::from_millis(READINESS_TIMEOUT_MS),
                self.ledger.ping(),
            )
            .await;
            let mut checks = vec![match pg {
                Ok(Ok(_)) => ReadinessCheck {
                    name: "postgres".into(),
                    ok: true,
                    detail: "answers".into(),
                },
                // The probe is unauthenticated: say what the operator acts on, keep the
                // server's own words (hosts, roles, SQL) for the log.
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "readiness: PostgreSQL check failed");
                    let detail = if e.is_transient() {
                        "unavailable (transient: unreachable, restarting or failing over); see the service log"
                    } else {
                        "refused the check; see the service log"
                    };
                    ReadinessCheck {
                        name: "postgres".into(),
                        ok: false,
                        detail: detail.into(),
                    }
                }
                Err(_) => ReadinessCheck {
                    name: "postgres".into(),
                    ok: false,
                    detail: format!("no answer within {READINESS_TIMEOUT_MS} ms"),
                },
            }];
            for extra in &self.extra {
                checks.push(extra().await);
            }
            checks
        })
    }
}

/// An [`ApiState`] over the real parts.
pub fn state_for(
    ledger: Arc<Ledger>,
    policies: Arc<dyn PolicyCatalog>,
    tokens: TokenStore,
    instance: &str,
    announcer: Option<kill_switch::Announcer>,
    extra_checks: Vec<ExtraCheck>,
) -> ApiState {
    ApiState {
        tokens: Arc::new(tokens),
        readiness: Arc::new(Readiness {
            ledger: ledger.reader(),
            extra: extra_checks,
        }),
        kill_switch: Arc::new(LedgerKillSwitch {
            ledger: ledger.clone(),
            instance: instance.to_string(),
            announcer,
        }),
        fx_rates: Arc::new(LedgerFxRates {
            ledger: ledger.clone(),
            instance: instance.to_string(),
        }),
        // serve adds its policies directory, so that rollbacks can restore files.
        policy_lifecycle: Arc::new(super::policy_lifecycle::LedgerPolicyLifecycle {
            ledger: ledger.clone(),
            instance: instance.to_string(),
            policies_dir: None,
        }),
        ledger: Arc::new(LedgerBackend { ledger }),
        policies,
        // serve replaces it with its ledger intake ([`super::intake::LedgerIntake`]).
        intake: Arc::new(super::intake::Disabled),
        // serve replaces it with its ledger and registry ([`super::approvals::LedgerApprovals`]).
        approvals: Arc::new(super::approvals::Disabled),
        metrics: crate::telemetry::metrics_handle(),
        chain: Arc::default(),
        clock: Arc::new(Utc::now),
    }
}

/// The broker answers a metadata request (a real Kafka-protocol round trip). One client
/// serves every probe, and an answer is reused for [`BROKER_PROBE_REUSE_MS`]: the
/// endpoint is unauthenticated, and each probe must not cost the broker a connection.
pub fn broker_check(brokers: String) -> ExtraCheck {
    type Cached = Option<(std::time::Instant, ReadinessCheck)>;
    let client: Arc<std::sync::OnceLock<Result<rdkafka::consumer::BaseConsumer, String>>> =
        Arc::default();
    let cache: Arc<tokio::sync::Mutex<Cached>> = Arc::default();
    Arc::new(move || {
        let brokers = brokers.clone();
        let client = client.clone();
        let cache = cache.clone();
        Box::pin(async move {
            // One probe at a time; the others wait for its answer.
            let mut cached = cache.lock().await;
            if let Some((at, check)) = cached.as_ref()
                && at.elapsed() < Duration::from_millis(BROKER_PROBE_REUSE_MS)
            {
                return check.clone();
            }
            let probe = tokio::task::spawn_blocking(move || -> Result<usize, String> {
                use rdkafka::consumer::Consumer;
                let consumer = client
                    .get_or_init(|| {
                        crate::bus::client_config(&brokers)
                            .create()
                            .map_err(|e| e.to_string())
                    })
                    .as_ref()
                    .map_err(Clone::clone)?;
                consumer
                    .fetch_metadata(None, Duration::from_millis(READINESS_TIMEOUT_MS))
                    .map(|m| m.brokers().len())
                    .map_err(|e| e.to_string())
            })
            .await;
            let check = match probe {
                Ok(Ok(n)) => ReadinessCheck {
                    name: "broker".into(),
                    ok: true,
                    detail: format!("{n} broker(s) answer"),
                },
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "readiness: broker check failed");
                    ReadinessCheck {
                        name: "broker".into(),
                        ok: false,
                        detail: "no answer to a metadata request; see the service log".into(),
                    }
                }
                Err(e) => ReadinessCheck {
                    name: "broker".into(),
                    ok: false,
                    detail: e.to_string(),
                },
            };
            *cached = Some((std::time::Instant::now(), check.clone()));
            check
        })
    })
}

/// How long a broker probe's answer is reused.
pub const BROKER_PROBE_REUSE_MS: u64 = 1_000;
