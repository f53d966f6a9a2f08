//! `spendguard policy shadow-report` and `spendguard policy promote` (SPEC §16): a shadow
//! candidate's live would-be decisions compared with the enforced ones, and a promotion
//! gated on them and on a replay of the same period.

use crate::cli::ops::{ImpactFormat, PeriodArgs, connect, runtime};
use crate::ledger::events::{PolicyPromoted, PromotionEvidence, PromotionThresholds};
use crate::ledger::{Ledger, Origin};
use crate::policy::{Bindings, BindingsFile, PolicySet};
use crate::report::events::load_events;
use crate::report::impact::{self, EXIT_LOOSENS, ImpactReport, Scope};
use anyhow::Context;
use clap::Args;
use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, Clone, Args)]
pub struct ShadowReportArgs {
    /// PostgreSQL URL of the ledger.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Name of the candidate policy bound under `shadow:` in bindings.yaml.
    #[arg(long)]
    pub candidate: String,
    #[command(flatten)]
    pub period: PeriodArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ImpactFormat,
}

#[derive(Debug, Clone, Args)]
pub struct PromoteArgs {
    /// Name of the candidate policy (a file of the policy directory, bound under `shadow:`).
    pub name: String,
    /// Policy directory (policies + bindings.yaml), as `serve` loads it; its
    /// bindings.yaml is rewritten when the gate passes.
    #[arg(long, env = "SPENDGUARD_POLICIES")]
    pub policies: PathBuf,
    /// PostgreSQL URL of the ledger.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[command(flatten)]
    pub period: PeriodArgs,
    /// Most intents recorded as DENY the candidate may ALLOW (in the replay and in shadow).
    #[arg(long, default_value_t = 0)]
    pub max_deny_to_allow: u64,
    /// Most intents recorded as DENY, REQUIRE_HITL or REQUIRE_MSIG the candidate may
    /// auto-allow (in the replay and in shadow): money a human had to approve, or that
    /// was refused, leaving without anyone looking.
    #[arg(long, default_value_t = 0)]
    pub max_newly_allowed: u64,
    /// Largest share of the compared intents whose ALLOW the candidate would withhold,
    /// e.g. `1%` or `0.5`.
    #[arg(long, default_value = "1%", value_parser = parse_percent)]
    pub max_tightening: Decimal,
    /// Who promotes (recorded in the `policy_promoted` event).
    #[arg(long, env = "USER")]
    pub actor: String,
    /// Judge and print, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_percent(text: &str) -> Result<Decimal, String> {
    let t = text.trim().trim_end_matches('%');
    let v = Decimal::from_str(t).map_err(|e| format!("{text:?} is not a percentage ({e})"))?;
    if v < Decimal::ZERO || v > Decimal::ONE_HUNDRED {
        return Err(format!("{text:?}: give a percentage from 0 to 100"));
    }
    Ok(v)
}

/// `spendguard policy shadow-report`: always exit 0 (it reports; `promote` judges).
pub fn run_shadow_report(args: ShadowReportArgs) -> anyhow::Result<i32> {
    let period = args.period.period()?;
    let report = runtime()?.block_on(async {
        let ledger = connect(&args.database_url).await?;
        let events = load_events(&ledger, period.end()).await?;
        anyhow::Ok(impact::shadow_report(&events, period, &args.candidate))
    })?;
    match args.format {
        ImpactFormat::Text => print!("{}", render_shadow(&report)),
        ImpactFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if report.intents_replayed == 0 {
        eprintln!(
            "note: no shadow decision of {:?} in the period: is it bound under `shadow:` in bindings.yaml, and has serve loaded it?",
            args.candidate
        );
    }
    Ok(0)
}

fn render_shadow(r: &ImpactReport) -> String {
    // The impact report's table, titled for what it is.
    impact::render_text(r).replacen("Impact of", "Shadow decisions of", 1)
}

/// The numbers a promotion is judged on, from one comparison.
pub fn evidence(r: &ImpactReport) -> PromotionEvidence {
    let newly_allowed: u64 = r
        .transitions
        .iter()
        .filter(|(k, _)| k.ends_with("->ALLOW") && !k.starts_with("ALLOW->"))
        .map(|(_, n)| n)
        .sum();
    let tightened: u64 = r
        .transitions
        .iter()
        .filter(|(k, _)| k.starts_with("ALLOW->"))
        .map(|(_, n)| n)
        .sum();
    let tightening_pct = if r.intents_replayed == 0 {
        Decimal::ZERO
    } else {
        (Decimal::from(tightened) * Decimal::ONE_HUNDRED / Decimal::from(r.intents_replayed))
            .round_dp(4)
            .normalize()
    };
    PromotionEvidence {
        intents: r.intents_replayed,
        unchanged: r.unchanged,
        deny_to_allow: r.denied_now_allowed,
        newly_allowed,
        tightened,
        tightening_pct,
        transitions: r.transitions.clone(),
    }
}

/// Why the gate refuses, one line per crossed threshold (empty: it passes).
pub fn gate(
    impact: &PromotionEvidence,
    shadow: &PromotionEvidence,
    t: &PromotionThresholds,
) -> Vec<String> {
    let mut refusals = Vec::new();
    if shadow.intents == 0 {
        refusals.push(
            "no shadow decision in the period: let the candidate run in shadow on live traffic first"
                .to_string(),
        );
    }
    for (what, e) in [("replay", impact), ("shadow", shadow)] {
        if e.deny_to_allow > t.max_deny_to_allow {
            refusals.push(format!(
                "{what}: {} intents recorded as DENY would be ALLOWed (at most {} allowed by --max-deny-to-allow)",
                e.deny_to_allow, t.max_deny_to_allow
            ));
        }
        if e.newly_allowed > t.max_newly_allowed {
            refusals.push(format!(
                "{what}: {} intents that were not auto-allowed (denied or sent to approvers) would be ALLOWed (at most {} allowed by --max-newly-allowed)",
                e.newly_allowed, t.max_newly_allowed
            ));
        }
        if e.tightening_pct > t.max_tightening_pct {
            refusals.push(format!(
                "{what}: {}% of {} intents lose their ALLOW ({} intents; at most {}% by --max-tightening)",
                e.tightening_pct, e.intents, e.tightened, t.max_tightening_pct
            ));
        }
    }
    refusals
}

/// The bindings after promotion: every shadow pattern of `name` becomes an enforced
/// binding of `name` at the same level, and leaves `shadow:`. Returns the patterns moved.
pub fn promote_bindings(file: &mut BindingsFile, name: &str) -> Vec<String> {
    let mut moved = Vec::new();
    for (level, shadow, enforced) in [
        ("agents", &mut file.shadow.agents, &mut file.agents),
        ("entities", &mut file.shadow.entities, &mut file.entities),
    ] {
        let patterns: Vec<String> = shadow
            .iter()
            .filter(|(_, p)| p.as_str() == name)
            .map(|(k, _)| k.clone())
            .collect();
        for pattern in patterns {
            shadow.remove(&pattern);
            enforced.insert(pattern.clone(), name.to_string());
            moved.push(format!("{level}[{pattern:?}]"));
        }
    }
    moved
}

fn bindings_path(dir: &Path) -> PathBuf {
    ["bindings.yaml", "bindings.yml", "bindings.json"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .unwrap_or_else(|| dir.join("bindings.yaml"))
}

/// `spendguard policy promote`: 0 promoted (or would be, with --dry-run), 3 refused by
/// the gate, 1 on errors.
pub fn run_promote(args: PromoteArgs) -> anyhow::Result<i32> {
    let period = args.period.period()?;
    let set = PolicySet::load_dir(&args.policies).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(run `spendguard policy check {}`)",
            args.policies.display()
        )
    })?;
    let candidate = set.get(&args.name).cloned().with_context(|| {
        format!(
            "no policy named {:?} in {}: promote names a policy file of the directory",
            args.name,
            args.policies.display()
        )
    })?;
    let path = bindings_path(&args.policies);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (_, mut file) =
        Bindings::parse(&text, &path.display().to_string()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let patterns = promote_bindings(&mut file, &args.name);
    if patterns.is_empty() {
        anyhow::bail!(
            "{:?} is not bound under `shadow:` in {}: bind it in shadow and let it run on live traffic before promoting it",
            args.name,
            path.display()
        );
    }
    let thresholds = PromotionThresholds {
        max_deny_to_allow: args.max_deny_to_allow,
        max_newly_allowed: args.max_newly_allowed,
        max_tightening_pct: args.max_tightening,
    };
    let rt = runtime()?;
    let (impact_report, shadow_report) = rt.block_on(async {
        let ledger = connect(&args.database_url).await?;
        let events = load_events(&ledger, period.end()).await?;
        let scope = Scope::Shadowed(args.name.clone());
        anyhow::Ok((
            impact::analyse(&events, period.clone(), &scope, &candidate),
            impact::shadow_report(&events, period.clone(), &args.name),
        ))
    })?;
    let impact_ev = evidence(&impact_report);
    let shadow_ev = evidence(&shadow_report);
    print!("{}", impact::render_text(&impact_report));
    print!("{}", render_shadow(&shadow_report));
    let refusals = gate(&impact_ev, &shadow_ev, &thresholds);
    if !refusals.is_empty() {
        eprintln!("promotion of {:?} refused:", args.name);
        for r in &refusals {
            eprintln!("  - {r}");
        }
        return Ok(EXIT_LOOSENS);
    }
    if args.dry_run {
        println!(
            "the gate passes: {} would be enforced for {} (dry run: nothing changed)",
            args.name,
            patterns.join(", ")
        );
        return Ok(0);
    }
    // The evidence is recorded before the bindings change: a failed write leaves an
    // audited promotion that is not in force (say so), never one in force without it.
    let promoted = PolicyPromoted {
        policy: candidate.identity.clone(),
        actor: args.actor.clone(),
        from: args.period.from,
        to: args.period.to,
        patterns: patterns.clone(),
        thresholds,
        impact: impact_ev,
        shadow: shadow_ev,
    };
    let seq = rt.block_on(async {
        let ledger = Ledger::connect(&args.database_url, "cli")
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the ledger: {e}"))?;
        ledger
            .record_promotion(promoted, &Origin::cli("cli"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot record the promotion: {e}"))
    })?;
    let json = serde_json::to_string_pretty(&file)?;
    let text = format!(
        "# Rewritten by `spendguard policy promote {}` (ledger seq {seq}); JSON is YAML.\n{json}\n",
        args.name
    );
    let tmp = path.with_extension("promote.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| {
            format!(
                "the promotion is recorded (seq {seq}) but {} could not be rewritten: bind {:?} for {} by hand",
                path.display(),
                args.name,
                patterns.join(", ")
            )
        })?;
    println!(
        "promoted {}@{} for {} (policy_promoted seq {seq}); serve enforces it once it reloads {}",
        candidate.identity.name,
        candidate.identity.version,
        patterns.join(", "),
        path.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(intents: u64, deny_to_allow: u64, tightened: u64) -> PromotionEvidence {
        let mut r = ImpactReport {
            candidate: crate::decision::PolicyIdentity {
                name: "c".into(),
                version: "1".into(),
                sha256: "00".into(),
            },
            period: crate::report::compliance::Period {
                from: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
                to: chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
                entity: None,
            },
            intents_replayed: intents,
            unchanged: intents - deny_to_allow - tightened,
            transitions: Default::default(),
            examples: Default::default(),
            newly_allowed_spend: Default::default(),
            newly_blocked_spend: Default::default(),
            denied_now_allowed: deny_to_allow,
            unreadable: vec![],
        };
        if tightened > 0 {
            r.transitions.insert("ALLOW->DENY".into(), tightened);
        }
        if deny_to_allow > 0 {
            r.transitions.insert("DENY->ALLOW".into(), deny_to_allow);
        }
        evidence(&r)
    }

    fn thresholds(max_deny_to_allow: u64, pct: &str) -> PromotionThresholds {
        PromotionThresholds {
            max_deny_to_allow,
            max_newly_allowed: max_deny_to_allow,
            max_tightening_pct: parse_percent(pct).unwrap(),
        }
    }

    #[test]
    fn the_gate_refuses_each_crossed_threshold_and_passes_at_the_limits() {
        let t = thresholds(0, "1%");
        assert!(
            gate(&ev(200, 0, 2), &ev(200, 0, 2), &t).is_empty(),
            "1% is allowed"
        );
        let r = gate(&ev(200, 0, 3), &ev(200, 1, 0), &t);
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(r[0].starts_with("replay: 1.5% of 200"), "{r:?}");
        assert!(
            r[1].starts_with("shadow: 1 intents recorded as DENY"),
            "{r:?}"
        );
        assert!(
            r[2].starts_with("shadow: 1 intents that were not auto-allowed"),
            "{r:?}"
        );
        // An approval skipped is a loosening too, with its own allowance.
        let mut hitl = ev(200, 0, 0);
        hitl.newly_allowed = 4;
        let r = gate(&ev(200, 0, 0), &hitl, &t);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].contains("4 intents that were not auto-allowed"),
            "{r:?}"
        );
        let loose = PromotionThresholds {
            max_newly_allowed: 4,
            ..t.clone()
        };
        assert!(gate(&ev(200, 0, 0), &hitl, &loose).is_empty());
        let none = gate(&ev(10, 0, 0), &ev(0, 0, 0), &t);
        assert!(none[0].contains("no shadow decision"), "{none:?}");
    }

    #[test]
    fn percentages_parse_with_or_without_the_sign_and_stay_in_range() {
        assert_eq!(parse_percent("1%").unwrap(), Decimal::ONE);
        assert_eq!(parse_percent("0.5").unwrap(), Decimal::new(5, 1));
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("x").is_err());
    }

    #[test]
    fn promotion_moves_only_the_candidates_shadow_patterns() {
        let (_, mut file) = Bindings::parse(
            "entities:\n  acme-br: old\nshadow:\n  entities:\n    acme-br: new\n  agents:\n    agent-1: other\n",
            "b.yaml",
        )
        .unwrap();
        let moved = promote_bindings(&mut file, "new");
        assert_eq!(moved, vec!["entities[\"acme-br\"]".to_string()]);
        assert_eq!(file.entities["acme-br"], "new");
        assert!(file.shadow.entities.is_empty());
        assert_eq!(file.shadow.agents["agent-1"], "other");
        // What promote writes reads back as the same bindings.
        let text = serde_json::to_string_pretty(&file).unwrap();
        let (b, again) = Bindings::parse(&text, "b.yaml").unwrap();
        assert_eq!(again, file);
        assert_eq!(b.resolve("agent-9", "acme-br"), Some("new"));
    }
}
