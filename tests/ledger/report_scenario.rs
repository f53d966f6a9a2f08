//! The compliance report of a real ledger holding a scenario with known totals, produced
//! by the `spendguard report` binary in every format; and a tampered ledger's report.

use crate::harness::policies::load;
use crate::harness::scenario::{
    base_time, fresh_ledger, origin, period_args, policy_dir, policy_text, report_scenario,
};
use crate::harness::serve::binary;
use chrono::Duration;
use spendguard::ledger::settle::SettleResult;
use spendguard::ledger::{Ledger, Outcome};
use spendguard::policy::PolicySet;
use std::process::Command;

/// `ops-p` with `authorizationTtl: 1h`: the approved i3 expires within the scenario's day.
fn lifecycle_policy() -> String {
    format!(
        "{}  authorizationTtl: 1h\n",
        policy_text("1.0.0", "500.00", true)
    )
}

/// Settles `text` at `minutes` after the scenario's base time (`None`: the ledger's clock).
async fn settle(
    ledger: &Ledger,
    set: &PolicySet,
    text: &str,
    minutes: Option<i64>,
) -> SettleResult {
    let s = spendguard::settlement::parse_settlement(text.as_bytes()).expect("valid settlement");
    let at = minutes.map(|m| base_time() + Duration::minutes(m));
    ledger
        .settle_at(set, &s, &origin(), at)
        .await
        .expect("settle")
}

fn applied_seq(r: &SettleResult, outcome: Outcome) -> i64 {
    match r {
        SettleResult::Applied { seq, outcome: o } if o.outcome == outcome => *seq,
        other => panic!("expected {outcome:?}, got {other:?}"),
    }
}

/// The lifecycle of the report scenario's authorizations, all in the scenario's UTC day:
/// i1 (ALLOW 100.00): CAPTURE 60.00, VOID of the remainder (40.00), REFUND 25.00;
/// i3 (APPROVED 450.00 at +12 min, authorizationTtl 1h): expired at +2 h (450.00
/// released), then a forced CAPTURE of 400.00. Refused: a REFUND over the refundable
/// (`exceeds_refundable`) and a CAPTURE of an unknown intent (`unknown_intent`).
/// Returns the forced capture's ledger seq.
async fn lifecycle_scenario(ledger: &Ledger, set: &PolicySet) -> i64 {
    let brl = r#","currency":"BRL""#;
    let s = |id: &str, intent: &str, kind: &str, amount: &str| {
        let money = if amount.is_empty() {
            String::new()
        } else {
            format!(r#","amount":"{amount}"{brl}"#)
        };
        format!(r#"{{"settlementId":"{id}","intentId":"{intent}","type":"{kind}"{money}}}"#)
    };
    let r = settle(ledger, set, &s("s1", "i1", "CAPTURE", "60.00"), Some(40)).await;
    applied_seq(&r, Outcome::Captured);
    let r = settle(ledger, set, &s("s2", "i1", "VOID", ""), Some(41)).await;
    applied_seq(&r, Outcome::Voided);
    let r = settle(ledger, set, &s("s3", "i1", "REFUND", "25.00"), Some(42)).await;
    applied_seq(&r, Outcome::Refunded);
    let r = settle(ledger, set, &s("s4", "i1", "REFUND", "35.01"), Some(43)).await;
    assert!(
        matches!(&r, SettleResult::Refused { code, .. } if code == "exceeds_refundable"),
        "{r:?}"
    );
    let r = settle(ledger, set, &s("s5", "nope", "CAPTURE", "1.00"), Some(44)).await;
    assert!(
        matches!(&r, SettleResult::Refused { code, .. } if code == "unknown_intent"),
        "{r:?}"
    );
    let expired = ledger
        .expire_authorizations(base_time() + Duration::hours(2))
        .await
        .expect("expire");
    assert_eq!(
        expired
            .iter()
            .map(|m| (m.intent_id.as_str(), m.outcome))
            .collect::<Vec<_>>(),
        vec![("i3", Outcome::AuthExpired)],
        "i1 is final; i3's authorization expired"
    );
    let r = settle(ledger, set, &s("s6", "i3", "CAPTURE", "400.00"), Some(180)).await;
    let seq = applied_seq(&r, Outcome::Captured);
    assert_eq!(
        r.outcome().map(|o| o.flags.clone()),
        Some(vec!["capture_after_expiry".to_string()])
    );
    seq
}

fn run_report(url: &str, format: &str, out: &std::path::Path, entity: Option<&str>) -> i32 {
    let (from, to) = period_args();
    let mut cmd = Command::new(binary());
    cmd.args([
        "report",
        "--database-url",
        url,
        "--from",
        &from,
        "--to",
        &to,
        "--format",
        format,
        "--out",
    ])
    .arg(out);
    if let Some(e) = entity {
        cmd.args(["--entity", e]);
    }
    let output = cmd.output().expect("run spendguard report");
    if !output.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&output.stderr));
    }
    output.status.code().unwrap_or(-1)
}

#[tokio::test]
async fn report_numbers_match_the_scenario_in_every_format() {
    let Some((db, ledger)) = fresh_ledger().await else {
        return;
    };
    let url = db.url.clone();
    let (_dir, path) = policy_dir(&lifecycle_policy());
    let set = load(&path);
    report_scenario(&ledger, &set).await;
    let forced_seq = lifecycle_scenario(&ledger, &set).await;
    let day = base_time().date_naive().to_string();
    let tmp = tempfile::tempdir().unwrap();

    let json_path = tmp.path().join("r.json");
    assert_eq!(run_report(&url, "json", &json_path, None), 0);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let d = &r["decisions"];
    assert_eq!(d["total"], 6, "{r:#}");
    assert_eq!(d["byEffect"]["ALLOW"], 1);
    assert_eq!(d["byEffect"]["REQUIRE_HITL"], 1);
    assert_eq!(d["byEffect"]["REQUIRE_MSIG"], 1);
    assert_eq!(d["byEffect"]["DENY"], 3);
    assert_eq!(d["byAgent"]["a1"]["DENY"], 1);
    assert_eq!(d["byAgent"]["a2"]["DENY"], 2);
    assert_eq!(d["byCategory"]["gambling"]["DENY"], 1);
    assert_eq!(d["byPurpose"]["PIX"]["ALLOW"], 1);
    assert_eq!(d["byPolicy"]["ops-p@1.0.0"]["REQUIRE_MSIG"], 1);
    let reasons: Vec<(String, u64)> = serde_json::from_value(d["topDenyReasons"].clone()).unwrap();
    for code in [
        "exceeds_per_transaction_limit",
        "category_blocked",
        "kill_switch_activated",
    ] {
        assert!(
            reasons.contains(&(code.to_string(), 1)),
            "{code} in {reasons:?}"
        );
    }
    let a = &r["approvals"];
    assert_eq!(a["requested"], 2);
    assert_eq!(a["approved"], 1);
    assert_eq!(a["rejected"], 1);
    assert_eq!(a["stillPending"], 0);
    assert_eq!(a["timeToApproveP50Seconds"], 600);
    assert_eq!(a["timeToApproveP95Seconds"], 600);
    assert_eq!(a["refusedVotesByReason"]["bad_signature"], 1);
    let kill = r["killSwitch"].as_array().unwrap();
    assert_eq!(kill.len(), 2);
    assert_eq!(
        (kill[0]["active"].as_bool(), kill[1]["active"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(kill[0]["actor"], "ops-carol");
    assert_eq!(r["invalidInputs"], 1);
    assert_eq!(r["invalidInputsByCode"]["invalid_json"], 1);
    let a1 = r["spendByAgent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["agentId"] == "a1")
        .unwrap();
    assert_eq!(a1["spent"], "550.00");
    assert_eq!(a1["dailyCap"], "500.00");
    assert_eq!(r["auditChain"]["ok"], true);
    assert_eq!(r["privacy"]["maskedAccounts"], 6);
    assert_eq!(r["policies"][0]["name"], "ops-p");
    let l = &r["lifecycle"];
    // Authorized: i1 100 (ALLOW) + i3 450 (APPROVED); captured 60 + 400 forced; voided
    // the 40 left on i1; refunded 25; expired the 450 of i3.
    let brl = serde_json::json!({"authorized": "550.00", "captured": "460.00",
        "voided": "40.00", "refunded": "25.00", "expired": "450.00"});
    assert_eq!(l["totals"]["BRL"], brl, "{l:#}");
    assert_eq!(l["perDay"][&day]["BRL"], brl, "{l:#}");
    assert_eq!(l["settlementsApplied"], 4);
    assert_eq!(l["refusedSettlements"], 2);
    assert_eq!(l["refusedSettlementsByCode"]["exceeds_refundable"], 1);
    assert_eq!(l["refusedSettlementsByCode"]["unknown_intent"], 1);
    let forced = l["forcedCaptures"].as_array().unwrap();
    assert_eq!(forced.len(), 1);
    assert_eq!(
        (
            &forced[0]["intentId"],
            &forced[0]["agentId"],
            &forced[0]["settlementId"],
            &forced[0]["amount"],
            &forced[0]["seq"]
        ),
        (
            &serde_json::json!("i3"),
            &serde_json::json!("a1"),
            &serde_json::json!("s6"),
            &serde_json::json!("400.00"),
            &serde_json::json!(forced_seq)
        )
    );
    // Settlement events change none of the decision counts.
    assert_eq!(r["approvals"]["approved"], 1);

    let md_path = tmp.path().join("r.md");
    assert_eq!(run_report(&url, "md", &md_path, None), 0);
    let md = std::fs::read_to_string(&md_path).unwrap();
    for row in [
        "| decisions | 6 |",
        "| ALLOW | 1 |",
        "| REQUIRE_HITL | 1 |",
        "| REQUIRE_MSIG | 1 |",
        "| DENY | 3 |",
        "| invalid inputs | 1 |",
        "| kill-switch changes | 2 |",
        "| approved | 1 |",
        "| rejected | 1 |",
        "| time to approve p50 | 600 s |",
        "| bad_signature | 1 |",
        "| a1 | BRL | 550 |",
        "| BRL | 550 | 460 | 40 | 25 | 450 |",
        "| exceeds_refundable | 1 |",
        "| unknown_intent | 1 |",
        "| settlements applied | 4 |",
        "| forced captures | 1 |",
    ] {
        assert!(md.contains(row), "markdown lacks {row:?}:\n{md}");
    }
    let day_row = format!("| {day} | BRL | 550 | 460 | 40 | 25 | 450 |");
    assert!(md.contains(&day_row), "markdown lacks {day_row:?}:\n{md}");
    let forced_row = format!("| i3 | a1 | s6 | 400 | BRL | {forced_seq} |");
    assert!(md.contains(&forced_row), "markdown lacks {forced_row:?}");
    assert!(
        md.contains("## PCI DSS 10.2.2 mapping")
            && md.contains("## LGPD Art. 37 record of processing")
    );
    assert!(!md.contains("4111111111111111"), "no PAN in the report");

    let html_path = tmp.path().join("r.html");
    assert_eq!(run_report(&url, "html", &html_path, None), 0);
    let html = std::fs::read_to_string(&html_path).unwrap();
    for cell in [
        "<td>decisions</td><td>6</td>",
        "<td>DENY</td><td>3</td>",
        "<td>time to approve p50</td><td>600 s</td>",
        "<td>a1</td><td>BRL</td><td>550</td>",
        "<h2>Authorization lifecycle</h2>",
        "<td>BRL</td><td>550</td><td>460</td><td>40</td><td>25</td><td>450</td>",
        "<td>i3</td><td>a1</td><td>s6</td><td>400</td><td>BRL</td>",
    ] {
        assert!(html.contains(cell), "HTML lacks {cell}");
    }
    assert_eq!(html.matches("<svg").count(), 3);
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("4111111111111111"));

    // The same ledger filtered to an entity with no activity.
    let other = tmp.path().join("other.json");
    assert_eq!(run_report(&url, "json", &other, Some("nobody")), 0);
    let o: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&other).unwrap()).unwrap();
    assert_eq!(o["decisions"]["total"], 0);
    assert_eq!(o["invalidInputs"], 0);
    assert_eq!(o["lifecycle"]["settlementsApplied"], 0);
    assert_eq!(
        o["lifecycle"]["refusedSettlements"], 0,
        "the unknown intent is not attributed to any entity"
    );
    assert_eq!(o["lifecycle"]["forcedCaptures"], serde_json::json!([]));

    // Filtered to the scenario's entity: the same lifecycle, minus the unattributable
    // refusal.
    let mine = tmp.path().join("mine.json");
    assert_eq!(run_report(&url, "json", &mine, Some("acme-br")), 0);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mine).unwrap()).unwrap();
    assert_eq!(m["lifecycle"]["totals"]["BRL"], brl);
    assert_eq!(
        m["lifecycle"]["refusedSettlementsByCode"],
        serde_json::json!({"exceeds_refundable": 1})
    );
    assert_eq!(
        m["lifecycle"]["forcedCaptures"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn a_tampered_ledger_gives_exit_1_and_says_so() {
    let Some((db, ledger)) = fresh_ledger().await else {
        return;
    };
    let url = db.url.clone();
    let (_dir, path) = policy_dir(&policy_text("1.0.0", "500.00", true));
    let set = load(&path);
    report_scenario(&ledger, &set).await;
    // A superuser bypasses the append-only trigger and edits one amount.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE ledger_event SET payload = replace(payload, '\"450.00\"', '\"45.00\"') WHERE resource LIKE '%i3%' AND event_type = 'intent_decided'")
        .execute(&mut conn)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("r.json");
    assert_eq!(run_report(&url, "json", &p, None), 1);
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(r["auditChain"]["ok"], false);
    assert!(
        r["auditChain"]["firstProblem"]
            .as_str()
            .unwrap()
            .contains("altered"),
        "{r:#}"
    );
}

/// PNG width and height from the IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[1..4] != b"PNG" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}

/// The HTML report opens offline in headless Chromium (network disabled) and renders to a
/// PNG of the requested size. `scripts/report-screenshot.sh` installs the Debian package
/// `chromium` when it is missing.
#[tokio::test]
async fn html_report_renders_in_headless_chromium() {
    let Some((db, ledger)) = fresh_ledger().await else {
        return;
    };
    let url = db.url.clone();
    let (_dir, path) = policy_dir(&policy_text("1.0.0", "500.00", true));
    let set = load(&path);
    report_scenario(&ledger, &set).await;
    let tmp = tempfile::tempdir().unwrap();
    let html = tmp.path().join("report.html");
    assert_eq!(run_report(&url, "html", &html, None), 0);
    let png = tmp.path().join("report.png");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/report-screenshot.sh");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(script)
            .arg(&html)
            .arg(&png)
            .arg("1200x2000")
            .output()
            .map(|o| (o, png))
    })
    .await
    .unwrap()
    .expect("run scripts/report-screenshot.sh");
    let (output, png) = out;
    assert!(
        output.status.success(),
        "screenshot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert_eq!(png_size(&bytes), Some((1200, 2000)));
    // A blank page compresses to almost nothing; tables and charts do not.
    assert!(
        bytes.len() > 20_000,
        "screenshot looks blank ({} bytes)",
        bytes.len()
    );
}
