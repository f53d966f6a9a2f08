//! The web console (`/console`, SPEC §13.3) over a real ledger: each view shows the
//! ledger's data as the API gives it, the usage view draws a bar per limit, the kill-switch
//! form is drawn for an operator only and its post trips the switch through the API's
//! handler (refused to an auditor), no token gets a sign-in form and never data, and a
//! hostile agent id is escaped. No browser runs here: the HTML is checked as text.

use crate::harness::db::{fresh_db, origin};
use crate::harness::http::exchange;
use crate::harness::intent::{ENTITY, intent};
use crate::harness::policies::{load, policy_dir};
use spendguard::api::{self, Role, TokenStore, auth::hash_token, backends};
use spendguard::decision::Effect;
use spendguard::ledger::Ledger;
use spendguard::policy::PolicySet;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READER: &str = "console-reader-token";
const OPERATOR: &str = "console-operator-token";
const AUDITOR: &str = "console-auditor-token";
const APPROVER: &str = "console-approver-token";

/// Three limits (amount, count, entity amount+count) besides the day and month caps; MSIG
/// above 800.00 so an intent waits for approval.
const POLICY: &str = "name: con-p\ncurrency: BRL\ntimezone: America/Sao_Paulo\ncaps: { perTxn: \"10000.00\", daily: \"100000.00\", monthly: \"1000000.00\" }\nmsig: { threshold: { higherThan: \"800.00\", approvals: 2 } }\napprovalTtl: 604800s\nlimits:\n  - { name: weekly-utility, window: { calendar: week }, amount: \"1000.00\", filter: { categoryIn: [utility] } }\n  - { name: burst, window: { trailing: 1h }, count: 3 }\n  - { name: entity-weekly, window: { calendar: week }, amount: \"1500.00\", count: 10, scope: entity }\n";

const HOSTILE: &str = r#"a<script>alert('x')</script>"'&"#;

async fn decide(ledger: &Ledger, set: &PolicySet, i: spendguard::intent::SpendIntent) -> Effect {
    ledger
        .decide(set, &i, &origin())
        .await
        .expect("decide")
        .message
        .effect
}

/// The API with the console over `ledger`; approver `ann` may approve for `acme-*` only.
async fn start(
    ledger: Ledger,
    policies: std::path::PathBuf,
) -> (SocketAddr, Arc<api::console::ChainStatus>, impl Drop) {
    use base64::Engine;
    let tokens = TokenStore::default()
        .with_hash("dash", Role::Reader, &hash_token(READER))
        .and_then(|t| t.with_hash("ops-carol", Role::Operator, &hash_token(OPERATOR)))
        .and_then(|t| t.with_hash("audit-dan", Role::Auditor, &hash_token(AUDITOR)))
        .and_then(|t| t.with_approver("ann-token", "ann", &hash_token(APPROVER)))
        .unwrap();
    let set = Arc::new(load(&policies));
    let catalog: Arc<dyn api::PolicyCatalog> =
        Arc::new(backends::PolicySource(move || set.clone()));
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let registry = Arc::new(
        spendguard::approvals::Registry::parse(&format!(
            "approvers:\n  - {{ id: ann, publicKey: \"{}\", entities: [\"acme-*\"] }}\n",
            base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
        ))
        .expect("registry"),
    );
    let ledger = Arc::new(ledger);
    let approvals = Arc::new(api::approvals::LedgerApprovals {
        ledger: ledger.clone(),
        registry: Arc::new(move || registry.clone()),
        instance: "console-test".into(),
    });
    let mut state = backends::state_for(ledger, catalog, tokens, "console-test", None, vec![]);
    state.approvals = approvals;
    let chain = state.chain.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api::serve_listener(listener, state, async move {
        let _ = rx.await;
    }));
    struct Stop(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
    (addr, chain, Stop(Some(tx)))
}

/// One request with any extra header lines and a form body; (status, head, body).
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    form: Option<&str>,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if let Some(body) = form {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(form.unwrap_or(""));
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (status, head.to_ascii_lowercase(), body.to_string())
}

async fn page(addr: SocketAddr, path: &str, token: &str) -> (u16, String) {
    let (s, _, b) = exchange(addr, "GET", path, Some(token), None).await;
    (s, b)
}

#[tokio::test]
async fn console_views_over_a_seeded_ledger() {
    let Some(db) = fresh_db("sg_api_console_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_dir, path) = policy_dir(&[("con-p.yaml", POLICY)], "default: con-p\n");
    let set = load(&path);
    assert_eq!(
        decide(&ledger, &set, intent("c-u1", "agent-one", "300.00")).await,
        Effect::Allow
    );
    assert_eq!(
        decide(&ledger, &set, intent("c-big", "agent-two", "900.00")).await,
        Effect::RequireMsig
    );
    assert_eq!(
        decide(&ledger, &set, intent("c-evil", HOSTILE, "5.00")).await,
        Effect::Allow
    );
    // Waiting too, of an entity approver ann may not approve for.
    let mut other = intent("c-other", "agent-three", "950.00");
    other.entity_id = "other-co".into();
    assert_eq!(decide(&ledger, &set, other).await, Effect::RequireMsig);
    let (addr, chain, _stop) = start(ledger, path).await;

    // No token: the sign-in form, and none of the ledger's data.
    let (s, head, b) = raw(addr, "GET", "/console", &[], None).await;
    assert_eq!(s, 401, "{b}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(b.contains(r#"name="token""#), "{b}");
    assert!(!b.contains("agent-two") && !b.contains("c-big"), "{b}");
    let (s, _, b) = raw(
        addr,
        "GET",
        "/console",
        &["Authorization: Bearer wrong"],
        None,
    )
    .await;
    assert_eq!(s, 401);
    assert!(!b.contains("agent-two"), "{b}");

    // Operator overview: approvals with reason and expiry, recent decisions, the switch.
    let (s, b) = page(addr, "/console", OPERATOR).await;
    assert_eq!(s, 200, "{b}");
    let approvals = section(&b, "approvals");
    assert!(
        approvals.contains("c-big") && approvals.contains("agent-two"),
        "{approvals}"
    );
    let pending = decision_json(addr, "c-big").await;
    let code = pending["reasons"][0]["code"].as_str().unwrap().to_string();
    assert!(
        approvals.contains(&format!("<code>{code}</code>")),
        "{code}: {approvals}"
    );
    let expires = approvals_expiry(addr).await;
    assert!(approvals.contains(&expires), "{expires}: {approvals}");
    let decisions = section(&b, "decisions");
    for id in ["c-u1", "c-big", "agent-one"] {
        assert!(decisions.contains(id), "{id}: {decisions}");
    }
    let switch = section(&b, "kill-switch");
    assert!(switch.contains("No kill switch is tripped"), "{switch}");
    assert!(
        switch.contains(r#"action="/console/kill-switch""#),
        "{switch}"
    );
    assert!(
        section(&b, "chain").contains("has not run yet"),
        "{}",
        section(&b, "chain")
    );

    // The hostile agent id is shown escaped, never as markup.
    assert!(!b.contains("<script>alert"), "{b}");
    assert!(
        b.contains("a&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&#39;&amp;"),
        "{b}"
    );

    // Auditor: the same data, no form to change the switch; its post is refused.
    let (s, b) = page(addr, "/console", AUDITOR).await;
    assert_eq!(s, 200, "{b}");
    assert!(section(&b, "approvals").contains("c-big"));
    let switch = section(&b, "kill-switch");
    assert!(switch.contains("No kill switch is tripped"), "{switch}");
    assert!(!b.contains("/console/kill-switch"), "{b}");
    let trip = "scope=agent%3Aagent-one&reason=console+test&action=trip";
    let auditor = format!("Authorization: Bearer {AUDITOR}");
    let (s, _, b) = raw(
        addr,
        "POST",
        "/console/kill-switch",
        &[&auditor],
        Some(trip),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    let (_, b) = page(addr, "/console", OPERATOR).await;
    assert!(section(&b, "kill-switch").contains("No kill switch is tripped"));

    // Approver ann: only what GET /v1/approvals gives its token (acme-br, not other-co),
    // and nothing else of the console.
    let (s, b) = page(addr, "/console", APPROVER).await;
    assert_eq!(s, 200, "{b}");
    let approvals = section(&b, "approvals");
    assert!(approvals.contains("c-big"), "{approvals}");
    assert!(!b.contains("c-other") && !b.contains("agent-three"), "{b}");
    assert!(
        !b.contains(r#"id="decisions""#) && !b.contains(r#"id="kill-switch""#),
        "{b}"
    );
    assert!(!b.contains(r#"id="chain""#), "{b}");
    let (_, b) = page(addr, "/console", OPERATOR).await;
    assert!(section(&b, "approvals").contains("c-other"), "{b}");

    // Reader: decisions and the switch's state, no approvals queue (not its API route).
    let (s, b) = page(addr, "/console", READER).await;
    assert_eq!(s, 200, "{b}");
    assert!(
        !b.contains(r#"id="approvals""#) && !b.contains("/console/kill-switch"),
        "{b}"
    );
    assert!(section(&b, "decisions").contains("c-big"));

    // Operator signs in with the form; the cookie (not the URL) carries the token, and
    // the console's own form trips the switch through the API's handler.
    let (s, head, _) = raw(
        addr,
        "POST",
        "/console/login",
        &[],
        Some(&format!("token={OPERATOR}")),
    )
    .await;
    assert_eq!(s, 303, "{head}");
    let cookie_line = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(cookie_line.contains("httponly") && cookie_line.contains("samesite=strict"));
    assert!(
        !cookie_line.contains(OPERATOR),
        "token in clear: {cookie_line}"
    );
    let cookie = cookie_line
        .trim_start_matches("set-cookie:")
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let cookie_header = format!("Cookie: {cookie}");
    let (s, _, b) = raw(addr, "GET", "/console", &[&cookie_header], None).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("ops-carol"), "{b}");
    let (s, _, b) = raw(
        addr,
        "POST",
        "/console/kill-switch",
        &[&cookie_header, "Origin: https://elsewhere.example"],
        Some(trip),
    )
    .await;
    assert_eq!(s, 403, "cross-site post: {b}");
    let (s, head, b) = raw(
        addr,
        "POST",
        "/console/kill-switch",
        &[&cookie_header],
        Some(trip),
    )
    .await;
    assert_eq!(s, 303, "{head}\n{b}");
    let (_, _, status) = exchange(addr, "GET", "/v1/kill-switch", Some(READER), None).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["active"][0]["scope"], "agent:agent-one", "{status}");
    assert_eq!(status["active"][0]["actor"], "api:ops-carol", "{status}");
    assert_eq!(status["active"][0]["reason"], "console test", "{status}");
    let (_, b) = page(addr, "/console", AUDITOR).await;
    let switch = section(&b, "kill-switch");
    assert!(
        switch.contains("agent:agent-one") && switch.contains("console test"),
        "{switch}"
    );
    // A trip without a reason is refused by the API's own rule.
    let (s, _, _) = raw(
        addr,
        "POST",
        "/console/kill-switch",
        &[&cookie_header],
        Some("scope=global&reason=+&action=trip"),
    )
    .await;
    assert_eq!(s, 400);

    // Usage of an agent: a bar for the day and month caps and for each limit
    // (weekly-utility, burst, entity-weekly amount and count).
    let (s, b) = page(addr, "/console/usage?agent=agent-one", READER).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b.matches(r#"<svg class="bar""#).count(), 2 + 4, "{b}");
    assert!(b.contains("weekly-utility") && b.contains("burst"), "{b}");
    assert!(b.contains("300.00 / 1000.00 BRL (30%)"), "{b}");
    assert!(
        b.contains(r#"<rect class="fill" width="30" height="4"/>"#),
        "{b}"
    );
    // The pages' CSP admits no inline style: the bars use none.
    assert!(!b.contains("style="), "{b}");
    // An entity: its entity-scoped limit, amount and count.
    let (s, b) = page(addr, &format!("/console/usage?entity={ENTITY}"), READER).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b.matches(r#"<svg class="bar""#).count(), 2, "{b}");
    assert!(b.contains("entity-weekly"), "{b}");
    // The hostile agent's own usage page escapes its id too.
    let (s, b) = page(
        addr,
        "/console/usage?agent=a%3Cscript%3Ealert(%27x%27)%3C%2Fscript%3E%22%27%26",
        READER,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(!b.contains("<script>alert"), "{b}");
    assert!(b.contains("a&lt;script&gt;"), "{b}");
    // Once serve has verified the chains, the console says when and what it found.
    chain.record(api::console::ChainVerification {
        at: chrono::Utc::now(),
        events: 12,
        problems: vec![format!("chain {HOSTILE} position 3: hash mismatch")],
        error: None,
    });
    let (_, b) = page(addr, "/console", AUDITOR).await;
    let verified = section(&b, "chain");
    assert!(
        verified.contains("FAILED") && verified.contains("hash mismatch"),
        "{verified}"
    );
    assert!(!verified.contains("<script>"), "{verified}");
    assert!(!verified.contains("has not run"), "{verified}");
    // An unknown agent: the API's 404, as a page.
    let (s, b) = page(addr, "/console/usage?agent=nobody", READER).await;
    assert_eq!(s, 404, "{b}");
}

/// The HTML of `<section id="{id}">` (panics when absent: the test wants it there).
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!(r#"<section id="{id}">"#))
        .unwrap_or_else(|| panic!("no section {id} in {html}"));
    let rest = &html[start..];
    &rest[..rest.find("</section>").map_or(rest.len(), |e| e + 10)]
}

async fn decision_json(addr: SocketAddr, id: &str) -> serde_json::Value {
    let (s, _, b) = exchange(
        addr,
        "GET",
        &format!("/v1/decisions/{id}"),
        Some(READER),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    serde_json::from_str(&b).unwrap()
}

/// The expiry of the one pending intent as `GET /v1/approvals` gives it, as the console
/// prints it (RFC 3339).
async fn approvals_expiry(addr: SocketAddr) -> String {
    let (s, _, b) = exchange(addr, "GET", "/v1/approvals", Some(OPERATOR), None).await;
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).unwrap();
    let at = v["approvals"][0]["expiresAt"].as_str().expect("expiresAt");
    chrono::DateTime::parse_from_rfc3339(at)
        .unwrap()
        .with_timezone(&chrono::Utc)
        .to_rfc3339()
}
