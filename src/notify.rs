//! Webhook notifications (SPEC §13.2): `notifications.yaml`, the signature receivers
//! verify, the retry schedule, and which ledger events become which notifications.
//!
//! The queue itself is in PostgreSQL (`crate::ledger::notifications`); `serve` runs the
//! notifier that fills it and the sender that drains it (`crate::serve::notifier`).

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest `notifications.yaml` read.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// Most webhooks in one file: every event is enqueued once per subscribed webhook.
pub const MAX_WEBHOOKS: usize = 32;
/// Longest webhook id (it is stored with each delivery and shown by the API).
pub const MAX_ID_LEN: usize = 64;
/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Shortest secret: 128 bits, whatever its encoding.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest secret file read.
const MAX_SECRET_BYTES: u64 = 4096;
/// Largest body POSTed. A decision message is bounded by the intent limits; anything
/// larger is replaced by a stub naming the ledger seq, so the receiver can fetch it.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Attempts before a delivery is marked failed (about 1 h 40 min with the schedule below).
pub const MAX_ATTEMPTS: i32 = 15;
/// First retry delay and the cap of the exponential schedule.
pub const BACKOFF_BASE_MS: u64 = 1_000;
pub const BACKOFF_CAP_MS: u64 = 10 * 60 * 1_000;
/// One POST may take this long (connect + send + answer).
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// What a webhook subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A HITL / MSIG decision waiting for approvers (also sent as `decision`).
    ApprovalRequested,
    /// Every decision message, as published on `spend.decisions`.
    Decision,
    /// Every outcome message: APPROVED / REJECTED / EXPIRED / KILLED and the lifecycle
    /// outcomes (CAPTURED, VOIDED, REFUNDED, AUTH_EXPIRED).
    Outcome,
    /// A kill-switch scope tripped or cleared.
    KillSwitch,
    /// A settlement the ledger refused (its audit record).
    SettlementRefused,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::ApprovalRequested,
        EventKind::Decision,
        EventKind::Outcome,
        EventKind::KillSwitch,
        EventKind::SettlementRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ApprovalRequested => "approval_requested",
            EventKind::Decision => "decision",
            EventKind::Outcome => "outcome",
            EventKind::KillSwitch => "kill_switch",
            EventKind::SettlementRefused => "settlement_refused",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: webhook {id:?}: {message}")]
    Webhook {
        path: String,
        id: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    webhooks: Vec<WebhookEntry>,
    /// PEM file of CAs trusted for `https://` receivers besides the public roots.
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookEntry {
    id: String,
    url: String,
    events: Vec<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
}

/// One configured receiver, its secret loaded.
#[derive(Clone)]
pub struct Webhook {
    pub id: String,
    pub url: Url,
    pub events: Vec<EventKind>,
    secret: Vec<u8>,
    /// `https://` URLs: the client configuration (public roots + the file's `ca_file`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Webhook {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url.text)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }

    /// The `Spendguard-Signature` header value for `body` sent at `unix_seconds`.
    pub fn signature(&self, unix_seconds: i64, body: &[u8]) -> String {
        signature_header(&self.secret, unix_seconds, body)
    }

    /// For tests and tools that build a webhook without a file (`https://` trusts the
    /// public roots only).
    pub fn new(id: &str, url: &str, events: Vec<EventKind>, secret: Vec<u8>) -> Option<Webhook> {
        let url = Url::parse(url).ok()?;
        let tls = if url.tls {
            Some(crate::tls_client::client_config(None).ok()?)
        } else {
            None
        };
        Some(Webhook {
            id: id.to_string(),
            url,
            events,
            secret,
            tls,
        })
    }
}

/// An `http://` or `https://` URL, split for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub text: String,
    /// `https://`: TLS, the certificate checked for `tls_name`.
    pub tls: bool,
    /// The host a certificate must be valid for (no port).
    pub tls_name: String,
    /// `host:port` to connect to.
    pub authority: String,
    /// Host header value.
    pub host: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!("url is longer than {MAX_URL_LEN} characters"));
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("url contains spaces or control characters".into());
        }
        let uri: axum::http::Uri = text
            .parse()
            .map_err(|e| format!("url {text:?} does not parse: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("url {text:?} must start with http:// or https://")),
        };
        let Some(authority) = uri.authority() else {
            return Err(format!("url {text:?} has no host"));
        };
        if authority.as_str().contains('@') {
            return Err("url must not carry credentials (user:password@): use the secret".into());
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority.host();
        if host.is_empty() {
            return Err(format!("url {text:?} has no host"));
        }
        if tls {
            crate::tls_client::server_name(host).map_err(|e| e.to_string())?;
        }
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        Ok(Url {
            text: text.to_string(),
            tls,
            tls_name: host.to_string(),
            authority: format!("{host}:{port}"),
            host: authority.as_str().to_string(),
            path: if path.is_empty() { "/".into() } else { path },
        })
    }
}

/// The webhooks of one file. An absent file is no webhooks (not an error); a present
/// one must be valid as a whole, or `serve` does not start.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    pub hooks: Vec<Webhook>,
}

impl Webhooks {
    pub fn load(path: &Path) -> Result<Webhooks, NotifyConfigError> {
        let shown = path.display().to_string();
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Webhooks::default()),
            Err(source) => {
                return Err(NotifyConfigError::Read {
                    path: shown,
                    source,
                });
            }
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(NotifyConfigError::TooLarge { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(|source| NotifyConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Webhooks::parse(&text, &shown, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text`; secrets are read from their files, and from the
    /// environment through `env`.
    pub fn parse(
        text: &str,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Webhooks, NotifyConfigError> {
        let parse_err = |message: String| NotifyConfigError::Parse {
            path: path.to_string(),
            message,
        };
        let file: FileFormat = serde_yaml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        if file.webhooks.len() > MAX_WEBHOOKS {
            return Err(parse_err(format!(
                "{} webhooks; at most {MAX_WEBHOOKS}",
                file.webhooks.len()
            )));
        }
        // One client configuration for every https:// receiver of the file, built only
        // when one is configured (a bad ca_file stops serve at start).
        let mut tls: Option<Arc<rustls::ClientConfig>> = None;
        let mut seen = HashSet::new();
        let mut hooks = Vec::with_capacity(file.webhooks.len());
        for entry in file.webhooks {
            let id = entry.id.clone();
            let bad = |message: String| NotifyConfigError::Webhook {
                path: path.to_string(),
                id: id.clone(),
                message,
            };
            if id.is_empty()
                || id.len() > MAX_ID_LEN
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(bad(format!(
                    "id must be 1..={MAX_ID_LEN} characters of A-Z a-z 0-9 - _ ."
                )));
            }
            if !seen.insert(id.clone()) {
                return Err(bad("the id is used twice".into()));
            }
            let url = Url::parse(&entry.url).map_err(bad)?;
            if entry.events.is_empty() {
                return Err(bad(format!(
                    "events is empty; list some of: {}",
                    known_kinds()
                )));
            }
            let mut events = Vec::new();
            for e in &entry.events {
                let kind = EventKind::parse(e)
                    .ok_or_else(|| bad(format!("unknown event {e:?}; known: {}", known_kinds())))?;
                if events.contains(&kind) {
                    return Err(bad(format!("event {e:?} is listed twice")));
                }
                events.push(kind);
            }
            let secret = match (&entry.secret_file, &entry.secret_env) {
                (Some(file), None) => read_secret_file(file).map_err(&bad)?,
                (None, Some(name)) => env(name)
                    .ok_or_else(|| bad(format!("environment variable {name} is not set")))?
                    .trim_end_matches(['\r', '\n'])
                    .as_bytes()
                    .to_vec(),
                _ => {
                    return Err(bad(
                        "exactly one of secret_file or secret_env is required (secrets are never written inline)"
                            .into(),
                    ));
                }
            };
            if secret.len() < MIN_SECRET_BYTES {
                return Err(bad(format!(
                    "the secret is {} bytes; at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                    secret.len()
                )));
            }
            let hook_tls = if url.tls {
                if tls.is_none() {
                    let config = crate::tls_client::client_config(file.ca_file.as_deref())
                        .map_err(|e| parse_err(e.to_string()))?;
                    tls = Some(config);
                }
                tls.clone()
            } else {
                None
            };
            hooks.push(Webhook {
                id,
                url,
                events,
                secret,
                tls: hook_tls,
            });
        }
        Ok(Webhooks { hooks })
    }

    pub fn get(&self, id: &str) -> Option<&Webhook> {
        self.hooks.iter().find(|h| h.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }
}

fn known_kinds() -> String {
    EventKind::ALL.map(EventKind::as_str).join(", ")
}

fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("secret_file {shown}: {e}"))?;
    if meta.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "secret_file {shown} is larger than {MAX_SECRET_BYTES} bytes"
        ));
    }
    let mut bytes = std::fs::read(path).map_err(|e| format!("secret_file {shown}: {e}"))?;
    // `openssl rand -hex 32 > file` leaves a newline that is not part of the secret.
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    Ok(bytes)
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`: Stripe's scheme, so receivers
/// can reuse their verification code. The timestamp is inside the MAC: a captured
/// request replayed later fails the receiver's age check.
pub fn signature_header(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(sign(secret, unix_seconds, body))
    )
}

fn sign(secret: &[u8], unix_seconds: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Checks a `Spendguard-Signature` header the way a receiver should (constant-time
/// comparison, timestamp within `tolerance_s` of `now`).
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_s: i64,
) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    // Saturating: a hostile `t=-9223372036854775808` must not overflow.
    if now_unix.saturating_sub(t).saturating_abs() > tolerance_s {
        return false;
    }
    v1.iter().any(|sig| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(sig).is_ok()
    })
}

/// Delay before attempt `attempts + 1`, after `attempts` failed ones: base 1 s doubling,
/// capped at 10 min, then "equal jitter" (half fixed, half random) so receivers that
/// come back are not hit by every instance's retries at the same instant. `unit` in
/// [0, 1) is the random draw (tests pass fixed values).
pub fn backoff(attempts: i32, unit: f64) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).max(0)).unwrap_or(0);
    let full = BACKOFF_BASE_MS
        .saturating_mul(1u64.checked_shl(exp.min(40)).unwrap_or(u64::MAX))
        .min(BACKOFF_CAP_MS);
    let half = full / 2;
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    Duration::from_millis(half + (half as f64 * unit) as u64)
}

/// The JSON body POSTed for one event. `data` is a message the ledger already masked
/// (decision and outcome messages as published) or an event payload masked at write.
pub fn body(
    delivery_id: &uuid::Uuid,
    kind: EventKind,
    ledger_seq: i64,
    recorded_at: chrono::DateTime<chrono::Utc>,
    data: &str,
) -> String {
    // Masked again: the payload leaves the service, and a message recorded before
    // masking existed would otherwise leave as it was.
    let mut data = data.to_string();
    crate::privacy::mask_json_in_place(&mut data);
    let parsed: serde_json::Value = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
    let mut text = serde_json::json!({
        "deliveryId": delivery_id.to_string(),
        "event": kind.as_str(),
        "ledgerSeq": ledger_seq,
        "recordedAt": recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": parsed,
    })
    .to_string();
    if text.len() > MAX_PAYLOAD_BYTES {
        text = serde_json::json!({
            "deliveryId": delivery_id.to_string(),
            "event": kind.as_str(),
            "ledgerSeq": ledger_seq,
            "recordedAt": recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "data": null,
            "truncated": true,
        })
        .to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Independent value: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'whsec_0123456789abcdef'
        let header = signature_header(b"whsec_0123456789abcdef", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            header,
            "t=1700000000,v1=9f5e37cdc7ea587c7c02062d93283cad000d66a831b2a1676418696db47ed6c2"
        );
        assert!(verify_signature(
            b"whsec_0123456789abcdef",
            &header,
            br#"{"a":1}"#,
            1_700_000_100,
            300
        ));
        // Another body, secret or an old timestamp fails.
        assert!(!verify_signature(
            b"whsec_0123456789abcdef",
            &header,
            br#"{"a":2}"#,
            1_700_000_100,
            300
        ));
        assert!(!verify_signature(
            b"whsec_0123456789abcdeX",
            &header,
            br#"{"a":1}"#,
            1_700_000_100,
            300
        ));
        assert!(!verify_signature(
            b"whsec_0123456789abcdef",
            &header,
            br#"{"a":1}"#,
            1_700_001_000,
            300
        ));
        assert!(!verify_signature(b"k", "garbage", b"", 0, 300));
        for hostile in [
            "t=-9223372036854775808,v1=00",
            "t=9223372036854775807,v1=zz",
            "t=,v1=",
            "v1=00,t=1,v1",
        ] {
            assert!(!verify_signature(b"k", hostile, b"", i64::MAX, 300));
            assert!(!verify_signature(b"k", hostile, b"", i64::MIN, 300));
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_to_ten_minutes_with_jitter() {
        let ms = |a, u| backoff(a, u).as_millis() as u64;
        // No jitter drawn: half the full delay; the largest draw: the full delay.
        assert_eq!(ms(1, 0.0), 500);
        assert_eq!(ms(1, 1.0), 1_000);
        assert_eq!(ms(2, 1.0), 2_000);
        assert_eq!(ms(3, 1.0), 4_000);
        assert_eq!(ms(10, 1.0), 512_000);
        assert_eq!(ms(11, 1.0), BACKOFF_CAP_MS);
        assert_eq!(ms(i32::MAX, 1.0), BACKOFF_CAP_MS);
        assert_eq!(ms(i32::MAX, 0.0), BACKOFF_CAP_MS / 2);
        // Nonsense input is bounded, never a panic.
        assert_eq!(ms(0, 1.0), 1_000);
        assert_eq!(ms(-5, f64::NAN), 500);
        for a in 1..=MAX_ATTEMPTS {
            assert!(ms(a, 0.5) <= ms(a + 1, 0.5));
        }
    }

    fn env(name: &str) -> Option<String> {
        (name == "HOOK_SECRET").then(|| "0123456789abcdef0123\n".to_string())
    }

    #[test]
    fn a_valid_file_loads_and_bad_ones_say_why() {
        let ok = "webhooks:\n  - id: ops\n    url: http://127.0.0.1:9000/hook?x=1\n    events: [approval_requested, kill_switch]\n    secret_env: HOOK_SECRET\n";
        let w = Webhooks::parse(ok, "n.yaml", &env).unwrap();
        let hook = w.get("ops").unwrap();
        assert_eq!(hook.url.authority, "127.0.0.1:9000");
        assert_eq!(hook.url.path, "/hook?x=1");
        assert!(hook.wants(EventKind::KillSwitch) && !hook.wants(EventKind::Decision));
        assert_eq!(hook.secret, b"0123456789abcdef0123");
        assert!(!format!("{hook:?}").contains("0123456789abcdef"));
        let tls = "webhooks:\n  - id: t\n    url: https://hooks.example/in\n    events: [decision]\n    secret_env: HOOK_SECRET\n";
        let hook = Webhooks::parse(tls, "n.yaml", &env).unwrap().hooks[0].clone();
        assert!(hook.url.tls && hook.tls.is_some());
        assert_eq!(hook.url.authority, "hooks.example:443");
        assert_eq!(hook.url.tls_name, "hooks.example");
        assert!(w.get("ops").unwrap().tls.is_none());
        assert!(
            Webhooks::parse("webhooks: []\n", "n", &env)
                .unwrap()
                .is_empty()
        );

        let cases = [
            (
                "webhooks:\n  - id: a\n    url: http://h/\n    events: [decision]\n    secret_env: HOOK_SECRET\n    secret: x\n",
                "unknown field",
            ),
            (
                "ca_file: /nonexistent/ca.pem\nwebhooks:\n  - id: a\n    url: https://h/\n    events: [decision]\n    secret_env: HOOK_SECRET\n",
                "cannot read the CA file /nonexistent/ca.pem",
            ),
            (
                "webhooks:\n  - id: a\n    url: ftp://h/\n    events: [decision]\n    secret_env: HOOK_SECRET\n",
                "must start with http://",
            ),
            (
                "webhooks:\n  - id: a\n    url: http://h/\n    events: [decided]\n    secret_env: HOOK_SECRET\n",
                "unknown event \"decided\"",
            ),
            (
                "webhooks:\n  - id: a\n    url: http://h/\n    events: []\n    secret_env: HOOK_SECRET\n",
                "events is empty",
            ),
            (
                "webhooks:\n  - id: a\n    url: http://h/\n    events: [decision]\n",
                "exactly one of secret_file or secret_env",
            ),
            (
                "webhooks:\n  - id: a\n    url: http://h/\n    events: [decision]\n    secret_env: NOPE\n",
                "NOPE is not set",
            ),
            (
                "webhooks:\n  - id: a\n    url: http://h/\n    events: [decision]\n    secret_env: HOOK_SECRET\n  - id: a\n    url: http://h/\n    events: [decision]\n    secret_env: HOOK_SECRET\n",
                "used twice",
            ),
            (
                "webhooks:\n  - id: 'a b'\n    url: http://h/\n    events: [decision]\n    secret_env: HOOK_SECRET\n",
                "id must be",
            ),
            (
                "webhooks:\n  - id: a\n    url: http://u:p@h/\n    events: [decision]\n    secret_env: HOOK_SECRET\n",
                "credentials",
            ),
            ("hooks: []\n", "unknown field"),
        ];
        for (text, expected) in cases {
            let err = Webhooks::parse(text, "n.yaml", &env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{text}\n→ {err}");
        }
        let short = |n: &str| (n == "S").then(|| "short".to_string());
        let err = Webhooks::parse(
            "webhooks:\n  - id: a\n    url: http://h/\n    events: [decision]\n    secret_env: S\n",
            "n",
            &short,
        )
        .unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
    }

    #[test]
    fn absent_file_is_no_webhooks() {
        let w = Webhooks::load(Path::new("/nonexistent/notifications.yaml")).unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn bodies_are_masked_and_bounded() {
        let id = uuid::Uuid::nil();
        let at = chrono::DateTime::from_timestamp(0, 0).unwrap();
        let b = body(
            &id,
            EventKind::Decision,
            7,
            at,
            r#"{"memo":"card 4111 1111 1111 1111"}"#,
        );
        assert!(!b.contains("4111 1111 1111 1111"), "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["ledgerSeq"], 7);
        assert_eq!(v["event"], "decision");
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_PAYLOAD_BYTES));
        let b = body(&id, EventKind::Decision, 8, at, &big);
        assert!(b.len() < 1024 && b.contains("\"truncated\":true"), "{b}");
    }
}
