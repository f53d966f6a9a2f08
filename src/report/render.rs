//! Rendering a [`ComplianceReport`] as JSON, Markdown or one self-contained HTML file
//! with inline SVG charts (no scripts, no external resources: it opens offline).
//!
//! Markdown and HTML are rendered from the same list of sections so they cannot
//! disagree; the JSON is the report structure itself.

use std::fmt::Write as _;

use rust_decimal::Decimal;

use super::compliance::*;
use super::svg;
use crate::decision::Effect;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Md,
    Html,
}

pub fn render(report: &ComplianceReport, format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(report)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
        Format::Md => markdown(&sections(report)),
        Format::Html => html(report, &sections(report)),
    }
}

enum Block {
    Para(String),
    Table {
        headers: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Chart(String),
}

struct Section {
    title: String,
    blocks: Vec<Block>,
}

fn table<const N: usize>(headers: [&str; N], rows: Vec<[String; N]>) -> Block {
    Block::Table {
        headers: headers.iter().map(|h| h.to_string()).collect(),
        rows: rows.into_iter().map(|r| r.to_vec()).collect(),
    }
}

fn effect_rows<'a>(
    m: impl IntoIterator<Item = (&'a String, &'a EffectCounts)>,
    limit: usize,
) -> Vec<[String; 6]> {
    let mut rows: Vec<(&String, &EffectCounts)> = m.into_iter().collect();
    rows.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then_with(|| a.0.cmp(b.0)));
    rows.into_iter()
        .take(limit)
        .map(|(k, c)| {
            [
                k.clone(),
                c.total().to_string(),
                c.allow.to_string(),
                c.hitl.to_string(),
                c.msig.to_string(),
                c.deny.to_string(),
            ]
        })
        .collect()
}

const EFFECT_HEADERS: [&str; 6] = ["", "total", "ALLOW", "REQUIRE_HITL", "REQUIRE_MSIG", "DENY"];

fn with_first(mut h: [&'static str; 6], first: &'static str) -> [&'static str; 6] {
    h[0] = first;
    h
}

fn dec(d: Decimal) -> String {
    d.normalize().to_string()
}

fn secs(s: Option<i64>) -> String {
    s.map_or_else(|| "n/a".into(), |s| format!("{s} s"))
}

fn sections(r: &ComplianceReport) -> Vec<Section> {
    let d = &r.decisions;
    let a = &r.approvals;
    let mut out = Vec::new();
    let scope = r
        .period
        .entity
        .as_ref()
        .map_or_else(|| "all entities".to_string(), |e| format!("entity {e}"));
    out.push(Section {
        title: "Summary".into(),
        blocks: vec![
            Block::Para(format!(
                "Period {} to {} (UTC days, inclusive), {}. Generated {} by replaying {} ledger events of the period.",
                r.period.from, r.period.to, scope, r.generated_at.to_rfc3339(), r.events_in_period
            )),
            table(
                ["measure", "value"],
                vec![
                    ["decisions".into(), d.total.to_string()],
                    ["ALLOW".into(), d.by_effect.allow.to_string()],
                    ["REQUIRE_HITL".into(), d.by_effect.hitl.to_string()],
                    ["REQUIRE_MSIG".into(), d.by_effect.msig.to_string()],
                    ["DENY".into(), d.by_effect.deny.to_string()],
                    ["invalid inputs".into(), r.invalid_inputs.to_string()],
                    ["idempotency conflicts".into(), d.idempotency_conflicts.to_string()],
                    ["kill-switch changes".into(), r.kill_switch.len().to_string()],
                    ["settlements applied".into(), r.lifecycle.settlements_applied.to_string()],
                    ["settlements refused".into(), r.lifecycle.refused_settlements.to_string()],
                    ["forced captures".into(), r.lifecycle.forced_captures.len().to_string()],
                    [
                        "audit chain".into(),
                        if r.audit_chain.ok {
                            format!("verified ({} events)", r.audit_chain.events_checked)
                        } else {
                            format!("BROKEN: {}", r.audit_chain.first_problem.as_deref().unwrap_or("unknown"))
                        },
                    ],
                ],
            ),
        ],
    });

    let days: Vec<(String, [u64; 4])> = d
        .per_day
        .iter()
        .map(|(day, c)| {
            (
                day.format("%m-%d").to_string(),
                [c.allow, c.hitl, c.msig, c.deny],
            )
        })
        .collect();
    out.push(Section {
        title: "Decisions".into(),
        blocks: vec![
            Block::Chart(svg::stacked_days("Decisions per day by effect", &days)),
            Block::Para("By policy (name@version):".into()),
            table(
                with_first(EFFECT_HEADERS, "policy"),
                effect_rows(&d.by_policy, usize::MAX),
            ),
            Block::Para(format!("By agent (top {TOP_ROWS}; the JSON has all):")),
            table(
                with_first(EFFECT_HEADERS, "agent"),
                effect_rows(&d.by_agent, TOP_ROWS),
            ),
            Block::Para("By entity:".into()),
            table(
                with_first(EFFECT_HEADERS, "entity"),
                effect_rows(&d.by_entity, usize::MAX),
            ),
            Block::Para("By category:".into()),
            table(
                with_first(EFFECT_HEADERS, "category"),
                effect_rows(&d.by_category, usize::MAX),
            ),
            Block::Para("By purpose:".into()),
            table(
                with_first(EFFECT_HEADERS, "purpose"),
                effect_rows(&d.by_purpose, usize::MAX),
            ),
            Block::Para("Top deny reasons (denied intents carrying each code):".into()),
            table(
                ["code", "denied intents"],
                d.top_deny_reasons
                    .iter()
                    .take(TOP_ROWS)
                    .map(|(c, n)| [c.clone(), n.to_string()])
                    .collect(),
            ),
        ],
    });

    let bars: Vec<svg::CapBar> = r
        .spend_by_agent
        .iter()
        .take(TOP_AGENTS_CHARTED)
        .map(|s| svg::CapBar {
            label: format!("{} ({})", s.agent_id, s.currency),
            value: s.peak_day_spent,
            cap: s.daily_cap,
        })
        .collect();
    out.push(Section {
        title: "Spend".into(),
        blocks: vec![
            Block::Chart(svg::spend_vs_caps(
                "Peak day's committed spend vs daily cap (top agents)",
                &bars,
            )),
            table(
                [
                    "agent",
                    "currency",
                    "committed in period",
                    "peak day",
                    "peak day spent",
                    "daily cap",
                ],
                r.spend_by_agent
                    .iter()
                    .take(TOP_ROWS)
                    .map(|s| {
                        [
                            s.agent_id.clone(),
                            s.currency.clone(),
                            dec(s.spent),
                            s.peak_day.map_or_else(|| "-".into(), |d| d.to_string()),
                            dec(s.peak_day_spent),
                            s.daily_cap.map_or_else(|| "-".into(), dec),
                        ]
                    })
                    .collect(),
            ),
        ],
    });

    out.push(lifecycle_section(&r.lifecycle, r.period.entity.is_some()));

    out.push(Section {
        title: "Approvals".into(),
        blocks: vec![
            table(
                ["measure", "value"],
                vec![
                    ["requested (HITL + MSIG)".into(), a.requested.to_string()],
                    ["approved".into(), a.approved.to_string()],
                    ["rejected".into(), a.rejected.to_string()],
                    ["expired".into(), a.expired.to_string()],
                    ["killed at quorum".into(), a.killed.to_string()],
                    [
                        "cancelled by the payment service".into(),
                        a.cancelled.to_string(),
                    ],
                    [
                        "still pending at period end".into(),
                        a.still_pending.to_string(),
                    ],
                    ["votes accepted".into(), a.votes_accepted.to_string()],
                    ["votes refused".into(), a.refused_votes.to_string()],
                    [
                        "time to approve p50".into(),
                        secs(a.time_to_approve_p50_seconds),
                    ],
                    [
                        "time to approve p95".into(),
                        secs(a.time_to_approve_p95_seconds),
                    ],
                ],
            ),
            Block::Chart(svg::latency_histogram(
                "Time to approve",
                &a.time_to_approve_seconds,
            )),
            Block::Para("Refused votes by reason:".into()),
            table(
                ["reason", "votes"],
                a.refused_votes_by_reason
                    .iter()
                    .map(|(k, v)| [k.clone(), v.to_string()])
                    .collect(),
            ),
        ],
    });

    out.push(Section {
        title: "Kill-switch timeline".into(),
        blocks: vec![table(
            [
                "when (UTC)",
                "scope",
                "state",
                "actor",
                "reason",
                "ledger seq",
            ],
            r.kill_switch
                .iter()
                .map(|k| {
                    [
                        k.at.to_rfc3339(),
                        k.scope.clone(),
                        if k.active { "ON".into() } else { "off".into() },
                        k.actor.clone(),
                        k.reason.clone(),
                        k.seq.to_string(),
                    ]
                })
                .collect(),
        )],
    });

    out.push(Section {
        title: "Policy versions in force".into(),
        blocks: vec![table(
            ["activated (UTC)", "name", "version", "sha256", "actor"],
            r.policies
                .iter()
                .map(|p| {
                    [
                        if p.before_period {
                            format!("{} (before period)", p.at.to_rfc3339())
                        } else {
                            p.at.to_rfc3339()
                        },
                        p.name.clone(),
                        p.version.clone(),
                        p.sha256.clone(),
                        p.actor.clone(),
                    ]
                })
                .collect(),
        )],
    });

    out.push(Section {
        title: "Invalid input".into(),
        blocks: vec![
            Block::Para(format!(
                "{} malformed messages were refused, sent to the dead-letter topic and recorded{}.",
                r.invalid_inputs,
                if r.period.entity.is_some() {
                    " (not attributable to an entity: counted only in unfiltered reports)"
                } else {
                    ""
                }
            )),
            table(
                ["code", "messages"],
                r.invalid_inputs_by_code
                    .iter()
                    .map(|(k, v)| [k.clone(), v.to_string()])
                    .collect(),
            ),
        ],
    });

    out.push(Section {
        title: "Audit chain".into(),
        blocks: vec![Block::Para(if r.audit_chain.ok {
            format!(
                "The hash chain was recomputed over {} events and verified: no event was altered, inserted or removed.",
                r.audit_chain.events_checked
            )
        } else {
            format!(
                "VERIFICATION FAILED after {} events: {}. The figures above come from a ledger that was tampered with.",
                r.audit_chain.events_checked,
                r.audit_chain.first_problem.as_deref().unwrap_or("unknown problem")
            )
        })],
    });

    out.push(Section {
        title: "Privacy".into(),
        blocks: vec![
            Block::Para(format!(
                "{} decided intents carried a beneficiary account, stored masked (BIN + last four at most; never the full PAN). {} data subjects were erased in the period (their encryption keys destroyed; decisions stay verifiable).",
                r.privacy.masked_accounts,
                r.privacy.erased_subjects.len()
            )),
            table(
                ["subject", "erased at (UTC)", "actor"],
                r.privacy.erased_subjects.iter().map(|(s, t, a)| [s.clone(), t.to_rfc3339(), a.clone()]).collect(),
            ),
        ],
    });

    out.push(Section {
        title: "PCI DSS 10.2.2 mapping".into(),
        blocks: vec![
            Block::Para("Every ledger event records each element PCI DSS v4.0 requirement 10.2.2 asks of an audit log record:".into()),
            table(
                ["10.2.2 element", "ledger field", "example"],
                vec![
                    ["User identification".into(), "actor (agent id, approver id, operator / api:<token name>)".into(), "agent-42, ops-alice".into()],
                    ["Type of event".into(), "event_type".into(), "intent_decided, vote_refused, kill_switch_set".into()],
                    ["Date and time".into(), "recorded_at (database clock, UTC)".into(), r.generated_at.format("%Y-%m-%dT%H:%M:%SZ").to_string()],
                    ["Success or failure indication".into(), "payload: evaluation.effect, vote accepted/refused + reason, outcome".into(), "DENY exceeds_per_transaction_limit".into()],
                    ["Origination of event".into(), "origin: service instance, source (kafka/cli/api), partition, offset".into(), "serve-1 kafka p3 o1234".into()],
                    ["Identity or name of affected data, system component, resource, or service".into(), "resource (intent id, kill-switch scope, data subject) + policy identity".into(), "intent:7c0e…, scope:global".into()],
                ],
            ),
            Block::Para(format!(
                "Integrity of these records (10.3.2, 10.3.4): append-only table and hash chain — {}.",
                if r.audit_chain.ok { "verified for this report" } else { "FAILED for this report" }
            )),
        ],
    });

    out.push(Section {
        title: "LGPD Art. 37 record of processing".into(),
        blocks: vec![table(
            ["item", "record"],
            vec![
                ["Operation".into(), "Authorisation of payments requested by autonomous agents (spend intents), approvals and audit".into()],
                ["Operations in period".into(), format!("{} decisions, {} votes, {} outcomes, {} erasures", d.total, a.votes_accepted + a.refused_votes, a.approved + a.rejected + a.expired + a.killed + a.cancelled, r.privacy.erased_subjects.len())],
                ["Purpose (Art. 6 I)".into(), "Spending control and fraud prevention; per intent: purpose (PIX, CARD, WIRE, FEE, OTHER) and category, see 'By purpose'".into()],
                ["Categories of personal data".into(), "Beneficiary identifier, beneficiary account (PAN masked; rest encrypted per data subject), country; agent and approver identifiers".into()],
                ["Data subjects".into(), "Beneficiaries of payments; approvers and operators (as actors)".into()],
                ["Sharing".into(), "Decisions published to the controller's payment services on spend.decisions only".into()],
                ["Retention".into(), "Events are append-only and kept for the legal retention of payment records; personal data is erasable by destroying the subject key (Art. 16, 18 VI)".into()],
                ["Security measures (Art. 46)".into(), "Encryption per subject, PAN masking, append-only storage, hash chain, role-based API with hashed tokens".into()],
                ["Erasures in period".into(), r.privacy.erased_subjects.len().to_string()],
            ],
        )],
    });
    out
}

const LIFECYCLE_HEADERS: [&str; 5] = ["authorized", "captured", "voided", "refunded", "expired"];

fn amounts(a: &LifecycleAmounts) -> [String; 5] {
    [
        dec(a.authorized),
        dec(a.captured),
        dec(a.voided),
        dec(a.refunded),
        dec(a.expired),
    ]
}

fn lifecycle_section(l: &Lifecycle, filtered: bool) -> Section {
    let [h1, h2, h3, h4, h5] = LIFECYCLE_HEADERS;
    let totals = l
        .totals
        .iter()
        .map(|(cur, a)| {
            let [x1, x2, x3, x4, x5] = amounts(a);
            [cur.clone(), x1, x2, x3, x4, x5]
        })
        .collect();
    let per_day = l
        .per_day
        .iter()
        .flat_map(|(day, currencies)| {
            currencies.iter().map(move |(cur, a)| {
                let [x1, x2, x3, x4, x5] = amounts(a);
                [day.to_string(), cur.clone(), x1, x2, x3, x4, x5]
            })
        })
        .collect();
    Section {
        title: "Authorization lifecycle".into(),
        blocks: vec![
            Block::Para(format!(
                "What became of the money the decisions authorized, as the payment services reported it (SPEC §11), by UTC day of the ledger event: authorized (ALLOW decisions and APPROVED outcomes), captured, voided (VOIDs and the remainder released by final captures), refunded, and expired (released by the ledger after authorizationTtl). {} settlement messages were applied and {} refused{}.",
                l.settlements_applied,
                l.refused_settlements,
                if filtered {
                    " (a refusal naming no decided intent is counted only in unfiltered reports)"
                } else {
                    ""
                }
            )),
            table(["currency", h1, h2, h3, h4, h5], totals),
            Block::Para("Per day (UTC):".into()),
            table(["day", "currency", h1, h2, h3, h4, h5], per_day),
            Block::Para("Refused settlement messages by code:".into()),
            table(
                ["code", "messages"],
                l.refused_settlements_by_code
                    .iter()
                    .map(|(k, v)| [k.clone(), v.to_string()])
                    .collect(),
            ),
            Block::Para(
                "Forced captures (captured after the authorization expired; flagged capture_after_expiry):"
                    .into(),
            ),
            table(
                [
                    "when (UTC)",
                    "intent",
                    "agent",
                    "settlement",
                    "amount",
                    "currency",
                    "ledger seq",
                ],
                l.forced_captures
                    .iter()
                    .map(|f| {
                        [
                            f.at.to_rfc3339(),
                            f.intent_id.clone(),
                            f.agent_id.clone(),
                            f.settlement_id.clone(),
                            dec(f.amount),
                            f.currency.clone(),
                            f.seq.to_string(),
                        ]
                    })
                    .collect(),
            ),
        ],
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(sections: &[Section]) -> String {
    let mut s = String::from("# spendguard compliance report\n");
    for sec in sections {
        let _ = write!(s, "\n## {}\n\n", sec.title);
        for b in &sec.blocks {
            match b {
                Block::Para(p) => {
                    let _ = writeln!(s, "{p}\n");
                }
                Block::Table { headers, rows } => {
                    if rows.is_empty() {
                        s.push_str("_none_\n\n");
                        continue;
                    }
                    let _ = writeln!(
                        s,
                        "| {} |",
                        headers
                            .iter()
                            .map(|h| md_cell(h))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    );
                    let _ = writeln!(s, "|{}", "---|".repeat(headers.len()));
                    for r in rows {
                        let _ = writeln!(
                            s,
                            "| {} |",
                            r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")
                        );
                    }
                    s.push('\n');
                }
                Block::Chart(_) => {}
            }
        }
    }
    s
}

/// HTML-escapes text (every value in the report may come from an agent).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2430;padding:0 1rem}\
h1{font-size:1.6rem;border-bottom:3px solid #1d2430;padding-bottom:.4rem}h2{font-size:1.2rem;margin-top:2rem;color:#243b63}\
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.88rem}th,td{border:1px solid #ccd3de;padding:.25rem .55rem;text-align:left;vertical-align:top}\
th{background:#eef2f8}td:not(:first-child){font-variant-numeric:tabular-nums}.ok{color:#1b7f3b;font-weight:600}.bad{color:#b3261e;font-weight:700}\
svg{display:block;margin:.5rem 0 1rem;max-width:100%;height:auto}.none{color:#777;font-style:italic}";

fn html(r: &ComplianceReport, sections: &[Section]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>spendguard compliance report {} to {}</title><style>{CSS}</style></head><body>\n<h1>spendguard compliance report</h1>\n\
<p class=\"{}\">Audit chain: {}</p>\n",
        esc(&r.period.from.to_string()),
        esc(&r.period.to.to_string()),
        if r.audit_chain.ok { "ok" } else { "bad" },
        if r.audit_chain.ok {
            "verified".to_string()
        } else {
            format!(
                "BROKEN — {}",
                esc(r.audit_chain.first_problem.as_deref().unwrap_or(""))
            )
        }
    );
    for sec in sections {
        let _ = writeln!(s, "<section><h2>{}</h2>", esc(&sec.title));
        for b in &sec.blocks {
            match b {
                Block::Para(p) => {
                    let _ = writeln!(s, "<p>{}</p>", esc(p));
                }
                Block::Table { headers, rows } => {
                    if rows.is_empty() {
                        s.push_str("<p class=\"none\">none</p>\n");
                        continue;
                    }
                    s.push_str("<table><thead><tr>");
                    for h in headers {
                        let _ = write!(s, "<th>{}</th>", esc(h));
                    }
                    s.push_str("</tr></thead><tbody>\n");
                    for row in rows {
                        s.push_str("<tr>");
                        for c in row {
                            let _ = write!(s, "<td>{}</td>", esc(c));
                        }
                        s.push_str("</tr>\n");
                    }
                    s.push_str("</tbody></table>\n");
                }
                Block::Chart(svg) => {
                    s.push_str(svg);
                    s.push('\n');
                }
            }
        }
        s.push_str("</section>\n");
    }
    s.push_str("</body></html>\n");
    s
}

/// Colours of the effects in charts (colour-blind-safe palette).
pub fn effect_colour(e: Effect) -> &'static str {
    match e {
        Effect::Allow => "#1b9e77",
        Effect::RequireHitl => "#e6ab02",
        Effect::RequireMsig => "#d95f02",
        Effect::Deny => "#b3261e",
    }
}
