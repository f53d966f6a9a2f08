//! Limit usage (SPEC §12) through the API over a real ledger: `GET /v1/agents/{id}/usage`
//! lists every limit of the agent's policy and `GET /v1/entities/{id}/usage` the
//! entity-scoped ones, with exactly the numbers the next decision starts from.

use crate::endpoints::{READER, json, start};
use crate::harness::db::{fresh_db, origin};
use crate::harness::http::request as http;
use crate::harness::intent::{ENTITY, IntentExt, intent};
use crate::harness::policies::{load, policy_dir};
use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc};
use serde_json::{Value, json as j};
use spendguard::decision::Effect;
use spendguard::ledger::Ledger;
use spendguard::policy::PolicySet;

const POLICY: &str = "name: lim-p\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: { perTxn: \"10000.00\", daily: \"100000.00\", monthly: \"1000000.00\" }\nlimits:\n  - { name: weekly-utility, window: { calendar: week }, amount: \"1000.00\", filter: { categoryIn: [utility] } }\n  - { name: burst, window: { trailing: 1h }, count: 3 }\n  - { name: entity-weekly, window: { calendar: week }, amount: \"1500.00\", count: 10, scope: entity }\n";

async fn decide(ledger: &Ledger, set: &PolicySet, i: spendguard::intent::SpendIntent) -> Effect {
    ledger
        .decide(set, &i, &origin())
        .await
        .expect("decide")
        .message
        .effect
}

/// Monday 00:00 in São Paulo (UTC−3, no DST) after the week containing `now`.
fn next_monday_sao_paulo(now: DateTime<Utc>) -> DateTime<Utc> {
    let tz: chrono_tz::Tz = "America/Sao_Paulo".parse().unwrap();
    let local = now.with_timezone(&tz).date_naive();
    let monday = local - Duration::days(i64::from(local.weekday().num_days_from_monday()))
        + Duration::days(7);
    tz.from_local_datetime(&monday.and_time(NaiveTime::MIN))
        .unwrap()
        .with_timezone(&Utc)
}

fn instant(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not an instant: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

fn by_name<'a>(limits: &'a Value, name: &str) -> &'a Value {
    limits
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no limit {name} in {limits:#}"))
}

#[tokio::test]
async fn agent_and_entity_usage_report_every_limit_exactly() {
    let Some(db) = fresh_db("sg_api_limits_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_dir, path) = policy_dir(&[("lim-p.yaml", POLICY)], "default: lim-p\n");
    let set = load(&path);

    // Agent a1: two utility intents and one travel intent (outside weekly-utility's
    // filter); agent a2 of the same entity: one; agent b1 of another entity: one.
    assert_eq!(
        decide(&ledger, &set, intent("u1", "a1", "300.00")).await,
        Effect::Allow
    );
    assert_eq!(
        decide(&ledger, &set, intent("u2", "a1", "200.00")).await,
        Effect::Allow
    );
    assert_eq!(
        decide(
            &ledger,
            &set,
            intent("t1", "a1", "50.00").category("travel")
        )
        .await,
        Effect::Allow
    );
    assert_eq!(
        decide(&ledger, &set, intent("x1", "a2", "400.00")).await,
        Effect::Allow
    );
    let mut other = intent("o1", "b1", "700.00");
    other.entity_id = "other-co".into();
    assert_eq!(decide(&ledger, &set, other).await, Effect::Allow);

    let pool = db.pool().await;
    let first_a1: DateTime<Utc> =
        sqlx::query_scalar("SELECT accepted_at FROM spend_record WHERE intent_id = 'u1'")
            .fetch_one(&pool)
            .await
            .unwrap();

    let (addr, stop) = start(ledger, path.clone()).await;

    let (s, b) = http(addr, "GET", "/v1/agents/a1/usage", Some(READER), None).await;
    assert_eq!(s, 200, "{b}");
    let u = json(&b);
    let as_of = instant(&u["limitsAsOf"]);
    let monday = next_monday_sao_paulo(as_of);
    let week = format!(
        "week of {}",
        (monday - Duration::days(7))
            .with_timezone(&chrono_tz::America::Sao_Paulo)
            .date_naive()
    );
    let limits = &u["limits"];
    assert_eq!(limits.as_array().unwrap().len(), 3, "{u:#}");
    assert_eq!(
        by_name(limits, "weekly-utility"),
        &j!({
            "name": "weekly-utility", "scope": "agent", "window": week,
            "amount": "1000.00", "amountUsed": "500.00", "amountRemaining": "500.00",
            "resetsAt": monday.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        })
    );
    let burst = by_name(limits, "burst");
    assert_eq!(
        (
            &burst["window"],
            &burst["count"],
            &burst["countUsed"],
            &burst["countRemaining"]
        ),
        (&j!("trailing 1h"), &j!(3), &j!(3), &j!(0)),
        "{burst:#}"
    );
    assert!(burst.get("resetsAt").is_none() && burst.get("amount").is_none());
    assert_eq!(
        instant(&burst["freesNextAt"]),
        first_a1 + Duration::hours(1)
    );
    let entity = by_name(limits, "entity-weekly");
    assert_eq!(
        (
            &entity["scope"],
            &entity["amountUsed"],
            &entity["amountRemaining"],
            &entity["countUsed"],
            &entity["countRemaining"],
        ),
        (&j!("entity"), &j!("950.00"), &j!("550.00"), &j!(4), &j!(6)),
        "{entity:#}"
    );
    assert_eq!(instant(&entity["resetsAt"]), monday);

    let (s, b) = http(
        addr,
        "GET",
        "/v1/entities/acme-br/usage",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let e = json(&b);
    assert_eq!(e["entityId"], ENTITY);
    let policies = e["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{e:#}");
    assert_eq!(policies[0]["policy"]["name"], "lim-p");
    assert_eq!(
        policies[0]["limits"],
        j!([{
            "name": "entity-weekly", "scope": "entity", "window": week,
            "amount": "1500.00", "amountUsed": "950.00", "amountRemaining": "550.00",
            "count": 10, "countUsed": 4, "countRemaining": 6,
            "resetsAt": monday.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        }])
    );
    // The other entity's agent counts only there.
    let (_, b) = http(
        addr,
        "GET",
        "/v1/entities/other-co/usage",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(json(&b)["policies"][0]["limits"][0]["amountUsed"], "700.00");

    // An entity nothing is bound to (no default) would be 404; with `default` every
    // entity has a policy, and one without records has used nothing.
    let (s, b) = http(
        addr,
        "GET",
        "/v1/entities/quiet-co/usage",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["policies"][0]["limits"][0]["amountUsed"], "0.00");
    let _ = stop.send(());

    // The CLI prints the same limits (JSON), and a table.
    let args = [
        "usage",
        "a1",
        "--database-url",
        db.url.as_str(),
        "--policies",
        path.to_str().unwrap(),
    ];
    let (code, out) = crate::harness::serve::run(&[&args[..], &["--json"]].concat());
    assert_eq!(code, 0, "{out}");
    let cli = json(&out);
    assert_eq!(cli["entityId"], ENTITY);
    // Nothing was decided since: the same numbers and instants.
    assert_eq!(cli["limits"], u["limits"], "{out}");
    let (code, table) = crate::harness::serve::run(&args);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains("weekly-utility  agent   ")
            && table.contains("500.00 / 1000.00 (500.00)")
            && table.contains("3 / 3 (0)")
            && table.contains("950.00 / 1500.00 (550.00)"),
        "{table}"
    );

    // What deciding sees: a1's next intent breaks `burst` (its count is used up).
    let ledger = db.ledger().await;
    let d = ledger
        .decide(&set, &intent("u3", "a1", "10.00"), &origin())
        .await
        .unwrap();
    assert!(
        d.message
            .reasons
            .iter()
            .any(|r| r.code == "would_exceed_count_limit"
                && r.detail.starts_with("burst: 3 + 1 > 3")),
        "{:#?}",
        d.message.reasons
    );
}

#[tokio::test]
async fn entity_usage_without_a_binding_is_404() {
    let Some(db) = fresh_db("sg_api_limits_").await else {
        return;
    };
    let (_dir, path) = policy_dir(&[("lim-p.yaml", POLICY)], "entities: { acme-*: lim-p }\n");
    let (addr, stop) = start(db.ledger().await, path).await;
    let (s, b) = http(
        addr,
        "GET",
        "/v1/entities/other-co/usage",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(
        (s, json(&b)["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{b}"
    );
    let (s, b) = http(
        addr,
        "GET",
        "/v1/entities/acme-br/usage",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(json(&b)["policies"][0]["limits"][0]["countUsed"], 0);
    let _ = stop.send(());
}
