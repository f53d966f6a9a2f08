//! Bound identities (SPEC §14) on the real PostgreSQL: an agent is bound to the entity
//! it was first decided under; an intent claiming another entity is denied
//! `entity_mismatch` alone, so an entity's kill switch cannot be escaped with a
//! look-alike entity id. The binding is a projection: replay rebuilds and compares it.

use crate::harness::db::origin;
use crate::harness::intent::intent;
use crate::harness::policies::{DEFAULT_BINDINGS, policy_set};
use spendguard::decision::Effect;
use spendguard::kill_switch::Scope;

const POLICY: &str = "name: p\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: { perTxn: \"5000.00\", daily: \"100000.00\", monthly: \"100000.00\" }\n";

fn claiming(id: &str, agent: &str, entity: &str) -> spendguard::intent::SpendIntent {
    let mut i = intent(id, agent, "10.00");
    i.entity_id = entity.into();
    i
}

#[tokio::test]
async fn an_agent_claiming_another_entity_is_denied_even_past_a_kill_switch() {
    let Some(db) = crate::harness::db::fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = policy_set(&[("p.yaml", POLICY)], DEFAULT_BINDINGS);
    let o = origin();

    let first = ledger
        .decide(&set, &claiming("i1", "ag", "acme-br"), &o)
        .await
        .unwrap();
    assert_eq!(first.message.effect, Effect::Allow);
    let bound_seq = first.message.ledger_seq.unwrap();

    // Another entity for the same agent: denied alone, with the binding in the detail.
    let other = ledger
        .decide(&set, &claiming("i2", "ag", "acme-brx"), &o)
        .await
        .unwrap();
    assert_eq!(other.message.effect, Effect::Deny);
    assert_eq!(
        other.message.reasons.len(),
        1,
        "{:?}",
        other.message.reasons
    );
    assert_eq!(other.message.reasons[0].code, "entity_mismatch");
    assert_eq!(
        other.message.reasons[0].detail,
        format!(
            "agent ag is bound to entity acme-br (ledgerSeq {bound_seq}); the intent claims entity acme-brx"
        )
    );

    // The measured bypass of issue 13: the entity's switch is on, the agent claims a
    // look-alike entity. Denied, and not by the switch (which it does not cover).
    ledger
        .set_kill_switch(
            &Scope::Entity("acme-br".into()),
            true,
            "ops",
            "incident",
            &o,
        )
        .await
        .unwrap();
    let dodge = ledger
        .decide(&set, &claiming("i3", "ag", "acme-brx"), &o)
        .await
        .unwrap();
    assert_eq!(dodge.message.effect, Effect::Deny);
    assert_eq!(dodge.message.reasons[0].code, "entity_mismatch");
    let honest = ledger
        .decide(&set, &claiming("i4", "ag", "acme-br"), &o)
        .await
        .unwrap();
    assert_eq!(honest.message.reasons[0].code, "kill_switch_activated");

    // A new agent binds to its own first entity, denied or not; in one batch the
    // second intent already sees the first's binding.
    let batch = ledger
        .decide_batch(
            &set,
            &[
                (claiming("j1", "fresh", "beta"), o.clone()),
                (claiming("j2", "fresh", "gamma"), o.clone()),
            ],
        )
        .await
        .unwrap();
    let effects: Vec<_> = batch
        .iter()
        .map(|r| {
            let d = r.as_ref().unwrap();
            (d.message.effect, d.message.reasons[0].code.to_string())
        })
        .collect();
    assert_eq!(
        effects,
        [
            (Effect::Allow, "policy_compliant_all_checks_passed".into()),
            (Effect::Deny, "entity_mismatch".into())
        ]
    );

    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");

    // The binding table is a projection: a row changed behind the ledger is reported.
    let mut su = db.superuser().await;
    sqlx::query("UPDATE agent_entity SET entity_id = 'acme-brx' WHERE agent_id = 'ag'")
        .execute(&mut su)
        .await
        .unwrap();
    let report = ledger.replay(true).await.unwrap();
    assert!(
        report
            .projection_differences
            .iter()
            .any(|d| d.contains("agent_entity")),
        "{report:#?}"
    );
}

#[tokio::test]
async fn the_service_role_cannot_rewrite_a_binding() {
    let Some(db) = crate::harness::db::fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = policy_set(&[("p.yaml", POLICY)], DEFAULT_BINDINGS);
    ledger
        .decide(&set, &claiming("i1", "ag", "acme-br"), &origin())
        .await
        .unwrap();
    let mut service =
        <sqlx::PgConnection as sqlx::Connection>::connect(&db.url_as("spendguard_service"))
            .await
            .unwrap();
    for sql in [
        "UPDATE agent_entity SET entity_id = 'x' WHERE agent_id = 'ag'",
        "DELETE FROM agent_entity WHERE agent_id = 'ag'",
    ] {
        let err = sqlx::query(sql).execute(&mut service).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
}
