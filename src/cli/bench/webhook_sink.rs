//! `spendguard loadgen --webhook-sink ADDR`: loadgen also listens as the receiver of
//! `serve`'s webhooks (docs/api.md, "Webhooks"), so the cost of notifications is measured
//! end to end in the same run as the decisions (issue 15 item 5).
//!
//! Each POST is checked as docs/api.md tells a receiver to: the `Spendguard-Signature`
//! (`t=..,v1=..`, HMAC-SHA256 over `"<t>.<body>"` with the secret of
//! `--webhook-secret-env`) on the raw body, before anything in it is believed. A request
//! whose signature does not verify is counted and refused (401, so serve retries it as a
//! real receiver would make it); a verified one is answered 204 and counted by its
//! `event`, deduplicated on its `deliveryId` (delivery is at least once). A `decision`
//! delivery's latency is its receipt minus the moment loadgen sent that intent: one
//! clock (this process's monotonic one), the same start as the decision's own latency.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections at once, bodies over
//! [`MAX_BODY_BYTES`] refused unread, at most [`MAX_TRACKED`] intents and delivery ids
//! remembered (beyond that they are counted as `untracked`, not remembered).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, StatusCode};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::notify::{self, EventKind};

/// Largest request body read: twice the largest body serve sends
/// ([`notify::MAX_PAYLOAD_BYTES`]); a larger one is refused (413) and counted.
pub const MAX_BODY_BYTES: usize = 2 * notify::MAX_PAYLOAD_BYTES;
/// Connections served at once (serve's sender opens at most its send batch, 32); more
/// wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// Intents awaiting their notification plus intents notified, and delivery ids seen,
/// remembered at most (each about 100 bytes: 2,000,000 is ~200 MB at worst, 1,000/s for
/// over half an hour).
pub const MAX_TRACKED: usize = 2_000_000;
/// A signature's timestamp may be this far from the sink's clock (docs/api.md).
pub const SIGNATURE_TOLERANCE_S: i64 = 300;
/// Highest delivery latency recorded (longer ones are clamped), in microseconds.
const MAX_LATENCY_US: u64 = 600_000_000;

/// What the sink measured, for the pipeline phase.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReport {
    /// Where it listened.
    pub addr: String,
    /// Verified deliveries, each delivery id counted once.
    pub deliveries: u64,
    /// Verified deliveries by `event` (an event the docs do not name: `unknown`).
    pub by_event: BTreeMap<String, u64>,
    /// Decisions loadgen read on `spend.decisions` (received live + recovered).
    pub decisions_received: u64,
    /// Distinct intents of this run with a verified `decision` delivery.
    pub intents_notified: u64,
    /// Intents of this run with no `decision` delivery when the wait ended.
    pub not_notified: u64,
    /// Deliveries whose delivery id had already arrived (at least once: allowed).
    pub duplicates: u64,
    /// `decision` deliveries under a new delivery id for an intent already notified
    /// (one webhook, one decision per intent: none expected).
    pub repeated_intents: u64,
    /// `decision` deliveries for an intent this run did not send.
    pub foreign: u64,
    /// Requests whose signature did not verify (answered 401, not counted above).
    pub bad_signatures: u64,
    /// Verified requests whose body is not a delivery (no deliveryId / event).
    pub malformed: u64,
    /// Requests refused before verification: not a POST, body too large or unreadable.
    pub refused: u64,
    /// Intents or delivery ids not remembered because [`MAX_TRACKED`] was reached.
    pub untracked: u64,
    /// Verified deliveries per second, first to last.
    pub per_s: f64,
    /// `decision` delivery latency: intent sent → its delivery received.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl WebhookReport {
    /// What makes loadgen exit with 1: unverifiable requests, decisions never notified,
    /// one decision notified twice under two delivery ids.
    pub fn errors(&self) -> u64 {
        self.bad_signatures + self.not_notified + self.repeated_intents
    }
}

struct SinkState {
    /// Intents sent and not yet notified, with the moment loadgen sent them.
    sent_at: HashMap<String, Instant>,
    /// Intents notified (to tell a repeat from foreign traffic).
    notified: HashSet<String>,
    /// Delivery ids seen.
    seen: HashSet<u128>,
    hist: Histogram<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
    report: WebhookReport,
}

/// The receiver: started once, before the phases; the pipeline phase registers the
/// intents it sends and waits for their notifications.
pub struct WebhookSink {
    state: Arc<Mutex<SinkState>>,
    task: tokio::task::JoinHandle<()>,
}

fn lock(m: &Mutex<SinkState>) -> std::sync::MutexGuard<'_, SinkState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WebhookSink {
    /// Binds `addr` and serves until dropped.
    pub async fn start(addr: &str, secret: Vec<u8>) -> anyhow::Result<WebhookSink> {
        anyhow::ensure!(!secret.is_empty(), "the webhook secret is empty");
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--webhook-sink {addr}: cannot listen: {e}"))?;
        let bound = listener.local_addr()?;
        let state = Arc::new(Mutex::new(SinkState {
            sent_at: HashMap::new(),
            notified: HashSet::new(),
            seen: HashSet::new(),
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            first: None,
            last: None,
            report: WebhookReport {
                addr: bound.to_string(),
                ..Default::default()
            },
        }));
        let secret = Arc::new(secret);
        let handler_state = state.clone();
        let app = axum::Router::new()
            .fallback(
                move |method: Method, headers: HeaderMap, body: Result<Bytes, BytesRejection>| {
                    let now = Instant::now();
                    let state = handler_state.clone();
                    let secret = secret.clone();
                    async move { receive(&state, &secret, now, &method, &headers, body) }
                },
            )
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES));
        let listener = Limited {
            inner: listener,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        };
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("loadgen: the webhook sink stopped: {e}");
            }
        });
        Ok(WebhookSink { state, task })
    }

    /// An intent about to be sent: its decision delivery is awaited from `at`.
    pub fn register(&self, intent_id: &str, at: Instant) {
        let mut s = lock(&self.state);
        if s.sent_at.len() + s.notified.len() >= MAX_TRACKED {
            s.report.untracked += 1;
            return;
        }
        s.sent_at.insert(intent_id.to_string(), at);
    }

    /// An intent that could not be sent: nothing to await.
    pub fn forget(&self, intent_id: &str) {
        lock(&self.state).sent_at.remove(intent_id);
    }

    /// Waits until every registered intent has its decision delivery, or `deadline`.
    pub async fn wait_for_all(&self, deadline: Instant) {
        while !lock(&self.state).sent_at.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What arrived so far; `decisions_received` as the phase counted them.
    pub fn report(&self, decisions_received: u64) -> WebhookReport {
        let s = lock(&self.state);
        let ms = |q: f64| s.hist.value_at_quantile(q) as f64 / 1000.0;
        let span = match (s.first, s.last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        WebhookReport {
            decisions_received,
            intents_notified: s.notified.len() as u64,
            not_notified: s.sent_at.len() as u64,
            per_s: if span > 0.0 {
                s.report.deliveries as f64 / span
            } else {
                0.0
            },
            p50_ms: ms(0.50),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: s.hist.max() as f64 / 1000.0,
            ..s.report.clone()
        }
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the sink reads in a verified body: docs/api.md's `{"deliveryId", "event",
/// "ledgerSeq", "recordedAt", "data"}`, `data.intentId` for decisions.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivery {
    delivery_id: uuid::Uuid,
    event: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// One request: refused, unverified, or counted.
fn receive(
    state: &Mutex<SinkState>,
    secret: &[u8],
    now: Instant,
    method: &Method,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> StatusCode {
    let body = match body {
        Ok(body) if method == Method::POST => body,
        Ok(_) => {
            lock(state).report.refused += 1;
            return StatusCode::METHOD_NOT_ALLOWED;
        }
        Err(rejection) => {
            lock(state).report.refused += 1;
            return rejection.status();
        }
    };
    let signature = headers
        .get("spendguard-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !notify::verify_signature(
        secret,
        signature,
        &body,
        chrono::Utc::now().timestamp(),
        SIGNATURE_TOLERANCE_S,
    ) {
        lock(state).report.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(delivery) = serde_json::from_slice::<Delivery>(&body) else {
        lock(state).report.malformed += 1;
        return StatusCode::NO_CONTENT;
    };
    let mut s = lock(state);
    let id = delivery.delivery_id.as_u128();
    if s.seen.contains(&id) {
        s.report.duplicates += 1;
        return StatusCode::NO_CONTENT;
    }
    if s.seen.len() < MAX_TRACKED {
        s.seen.insert(id);
    } else {
        s.report.untracked += 1;
    }
    s.report.deliveries += 1;
    s.first.get_or_insert(now);
    s.last = Some(now);
    let kind = EventKind::parse(&delivery.event).map_or("unknown", EventKind::as_str);
    *s.report.by_event.entry(kind.to_string()).or_insert(0) += 1;
    if kind == EventKind::Decision.as_str() {
        let intent = delivery.data.get("intentId").and_then(|v| v.as_str());
        match intent {
            Some(intent) => {
                if let Some(at) = s.sent_at.remove(intent) {
                    let us = now
                        .duration_since(at)
                        .as_micros()
                        .clamp(1, u128::from(MAX_LATENCY_US)) as u64;
                    let _ = s.hist.record(us);
                    if s.notified.len() < MAX_TRACKED {
                        s.notified.insert(intent.to_string());
                    } else {
                        s.report.untracked += 1;
                    }
                } else if s.notified.contains(intent) {
                    s.report.repeated_intents += 1;
                } else {
                    s.report.foreign += 1;
                }
            }
            None => s.report.malformed += 1,
        }
    }
    StatusCode::NO_CONTENT
}

/// The sink's listener: a connection is accepted only with one of [`MAX_CONNECTIONS`]
/// permits, held until the connection closes.
struct Limited {
    inner: tokio::net::TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for Limited {
    type Io = Held;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Held, SocketAddr) {
        // The semaphore is never closed; should it be, accept without a permit rather
        // than stop serving.
        let permit = self.permits.clone().acquire_owned().await.ok();
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (
            Held {
                io,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection and its permit.
struct Held {
    io: tokio::net::TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-sink-0123456789abcdef";

    fn state() -> Mutex<SinkState> {
        Mutex::new(SinkState {
            sent_at: HashMap::new(),
            notified: HashSet::new(),
            seen: HashSet::new(),
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap(),
            first: None,
            last: None,
            report: WebhookReport::default(),
        })
    }

    fn post(s: &Mutex<SinkState>, signature: &str, body: &str) -> StatusCode {
        let mut headers = HeaderMap::new();
        headers.insert("spendguard-signature", signature.parse().unwrap());
        receive(
            s,
            SECRET,
            Instant::now(),
            &Method::POST,
            &headers,
            Ok(Bytes::copy_from_slice(body.as_bytes())),
        )
    }

    fn signed(body: &str) -> String {
        notify::signature_header(SECRET, chrono::Utc::now().timestamp(), body.as_bytes())
    }

    /// Counts, dedupes and times verified deliveries; refuses and counts the rest
    /// without believing a word of them.
    #[test]
    fn verified_deliveries_are_counted_once_and_the_rest_refused() {
        let s = state();
        lock(&s)
            .sent_at
            .insert("i-1".into(), Instant::now() - Duration::from_millis(30));
        lock(&s).sent_at.insert("i-2".into(), Instant::now());
        let d1 = r#"{"deliveryId":"0190a6f4-0000-7000-8000-000000000001","event":"decision","ledgerSeq":1,"data":{"intentId":"i-1","effect":"ALLOW"}}"#;
        assert_eq!(post(&s, &signed(d1), d1), StatusCode::NO_CONTENT);
        // The same delivery again: at least once, counted as a duplicate only.
        assert_eq!(post(&s, &signed(d1), d1), StatusCode::NO_CONTENT);
        // Another delivery id for the same intent's decision.
        let d1b = d1.replace("0001\"", "0009\"");
        assert_eq!(post(&s, &signed(&d1b), &d1b), StatusCode::NO_CONTENT);
        // A body signed with another secret, a tampered body, an old timestamp, no header.
        let d2 = r#"{"deliveryId":"0190a6f4-0000-7000-8000-000000000002","event":"decision","ledgerSeq":2,"data":{"intentId":"i-2"}}"#;
        let other = notify::signature_header(b"another-secret-0123456", 0, d2.as_bytes());
        assert_eq!(post(&s, &other, d2), StatusCode::UNAUTHORIZED);
        assert_eq!(
            post(&s, &signed(d1), &d1.replace("i-1", "i-2")),
            StatusCode::UNAUTHORIZED
        );
        let old =
            notify::signature_header(SECRET, chrono::Utc::now().timestamp() - 3600, d2.as_bytes());
        assert_eq!(post(&s, &old, d2), StatusCode::UNAUTHORIZED);
        assert_eq!(post(&s, "", d2), StatusCode::UNAUTHORIZED);
        assert_eq!(post(&s, "t=x,v1=zz", d2), StatusCode::UNAUTHORIZED);
        // Verified but not a delivery; an outcome; an event nobody documented; foreign.
        assert_eq!(post(&s, &signed("[1]"), "[1]"), StatusCode::NO_CONTENT);
        let o = r#"{"deliveryId":"0190a6f4-0000-7000-8000-000000000003","event":"outcome","data":{"intentId":"i-2","outcome":"EXPIRED"}}"#;
        assert_eq!(post(&s, &signed(o), o), StatusCode::NO_CONTENT);
        let u = r#"{"deliveryId":"0190a6f4-0000-7000-8000-000000000004","event":"surprise","data":null}"#;
        assert_eq!(post(&s, &signed(u), u), StatusCode::NO_CONTENT);
        let f = r#"{"deliveryId":"0190a6f4-0000-7000-8000-000000000005","event":"decision","data":{"intentId":"elsewhere"}}"#;
        assert_eq!(post(&s, &signed(f), f), StatusCode::NO_CONTENT);

        let r = lock(&s).report.clone();
        assert_eq!(r.deliveries, 5, "{r:?}");
        assert_eq!(
            r.by_event,
            BTreeMap::from([
                ("decision".into(), 3),
                ("outcome".into(), 1),
                ("unknown".into(), 1)
            ])
        );
        assert_eq!(
            (
                r.duplicates,
                r.repeated_intents,
                r.foreign,
                r.bad_signatures,
                r.malformed
            ),
            (1, 1, 1, 5, 1),
            "{r:?}"
        );
        let s = lock(&s);
        assert_eq!(s.notified.len(), 1);
        assert_eq!(s.sent_at.len(), 1, "i-2 still awaits its decision delivery");
        assert_eq!(s.hist.len(), 1);
        assert!(
            s.hist.min() >= 30_000,
            "latency from the send: {}",
            s.hist.min()
        );
    }

    #[test]
    fn refused_requests_are_counted() {
        let s = state();
        let status = receive(
            &s,
            SECRET,
            Instant::now(),
            &Method::GET,
            &HeaderMap::new(),
            Ok(Bytes::new()),
        );
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(lock(&s).report.refused, 1);
    }

    /// Over a real socket: the body limit holds, a signed POST counts.
    #[tokio::test]
    async fn the_sink_answers_over_http_and_refuses_oversized_bodies() {
        let sink = WebhookSink::start("127.0.0.1:0", SECRET.to_vec())
            .await
            .unwrap();
        let addr: SocketAddr = lock(&sink.state).report.addr.parse().unwrap();
        sink.register("i-9", Instant::now());
        let body = r#"{"deliveryId":"0190a6f4-0000-7000-8000-000000000009","event":"decision","data":{"intentId":"i-9"}}"#;
        let status = raw_post(addr, &signed(body), body.as_bytes()).await;
        assert!(status.starts_with("HTTP/1.1 204"), "{status}");
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        let status = raw_post(addr, "t=1,v1=00", &big).await;
        assert!(status.starts_with("HTTP/1.1 413"), "{status}");
        sink.wait_for_all(Instant::now() + Duration::from_secs(5))
            .await;
        let r = sink.report(1);
        assert_eq!(
            (r.deliveries, r.intents_notified, r.not_notified, r.refused),
            (1, 1, 0, 1),
            "{r:?}"
        );
    }

    /// One HTTP/1.1 POST; the status line of the answer.
    async fn raw_post(addr: SocketAddr, signature: &str, body: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nSpendguard-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        // The server may answer 413 and close before reading it all.
        let _ = c.write_all(body).await;
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}
