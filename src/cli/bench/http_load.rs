//! `spendguard loadgen --http URL`: the synchronous decision API (SPEC §13.4, §10: p99 ≤
//! 10 ms at 1,000 requests/s) under the same intent mix as the Kafka phases.
//!
//! Open loop: requests are started on schedule whatever the answers do, each on a
//! keep-alive connection from a pool (a new one when all are busy, up to
//! `--http-connections`), and latency is measured from the scheduled instant, so a stall
//! of the server counts against it instead of silently lowering the offered rate
//! (coordinated omission). The client is a minimal HTTP/1.1 one over tokio: enough for
//! the API's `Content-Length` answers, and no new dependency.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::loadgen::{LoadgenArgs, PhaseReport, make_intent};

/// Longest wait for one answer; past it the request counts as lost.
const REQUEST_TIMEOUT_MS: u64 = 15_000;
/// Largest answer read (a decision is ~1 KiB).
const MAX_ANSWER_BYTES: usize = 1 << 20;
const MAX_HEADER_LINES: usize = 64;
const TICK_MS: u64 = 1;

type Conn = BufReader<TcpStream>;

/// `host:port` and path prefix of an `http://` base URL.
fn parse_base(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow::anyhow!("--http takes an http:// URL (TLS: terminate it in front), got {url}")
    })?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_end_matches('/');
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    Ok((host.to_string(), prefix))
}

/// One request on `conn`; the status and body. Any error drops the connection.
async fn exchange(conn: &mut Conn, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    conn.get_mut().write_all(request).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut length = None;
    for _ in 0..MAX_HEADER_LINES {
        line.clear();
        conn.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            let n: usize = length.ok_or_else(|| bad("no content-length"))?;
            if n > MAX_ANSWER_BYTES {
                return Err(bad("answer too large"));
            }
            let mut body = vec![0; n];
            conn.read_exact(&mut body).await?;
            return Ok((status, body));
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok();
        }
    }
    Err(bad("too many header lines"))
}

#[derive(Default)]
struct Tally {
    ok: u64,
    lost: u64,
    effects: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

pub async fn run(base: &str, token: &str, args: &LoadgenArgs) -> anyhow::Result<i32> {
    let (host, prefix) = parse_base(base)?;
    let path = format!("{prefix}/v1/intents");
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let open = Arc::new(tokio::sync::Semaphore::new(args.http_connections.max(1)));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        REQUEST_TIMEOUT_MS * 1_000,
        3,
    )?));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let total = args.rate.saturating_mul(args.duration);
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(TICK_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    while sent < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            // The instant this request was due: its latency starts here.
            let scheduled = started + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            let g = make_intent(&mut rng, args.agents, &args.entity, &args.currency);
            let mut request = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                g.payload.len()
            )
            .into_bytes();
            request.extend_from_slice(&g.payload);
            let (pool, open, hist, tally, host) = (
                pool.clone(),
                open.clone(),
                hist.clone(),
                tally.clone(),
                host.clone(),
            );
            tasks.spawn(async move {
                let answer = tokio::time::timeout(
                    Duration::from_millis(REQUEST_TIMEOUT_MS),
                    send(&pool, &open, &host, &request),
                )
                .await;
                let elapsed = u64::try_from(scheduled.elapsed().as_micros()).unwrap_or(u64::MAX);
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                match answer {
                    Ok(Ok((200, body))) => {
                        t.ok += 1;
                        let effect = serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v.get("effect")?.as_str().map(str::to_string))
                            .unwrap_or_else(|| "unreadable".into());
                        *t.effects.entry(effect).or_default() += 1;
                        let _ = hist
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .record(elapsed.clamp(1, REQUEST_TIMEOUT_MS * 1_000));
                    }
                    Ok(Ok((status, _))) => {
                        t.lost += 1;
                        *t.errors.entry(format!("HTTP {status}")).or_default() += 1;
                    }
                    Ok(Err(e)) => {
                        t.lost += 1;
                        *t.errors.entry(e.to_string()).or_default() += 1;
                    }
                    Err(_) => {
                        t.lost += 1;
                        *t.errors.entry("timeout".into()).or_default() += 1;
                    }
                }
            });
            sent += 1;
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed_s = started.elapsed().as_secs_f64();
    let hist = hist.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1_000.0;
    let achieved = tally.ok as f64 / elapsed_s.max(f64::EPSILON);
    let report = PhaseReport {
        phase: "http".into(),
        offered_rate: args.rate,
        sent,
        send_errors: 0,
        received: tally.ok,
        recovered: 0,
        lost: tally.lost,
        duplicated: 0,
        achieved_per_s: achieved,
        p50_ms: ms(0.50),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1_000.0,
        sustained: tally.lost == 0 && achieved >= 0.95 * args.rate as f64,
        effects: tally.effects,
        consumer_errors: tally.errors,
        lifecycle: None,
        webhooks: None,
    };
    super::loadgen::print_reports(std::slice::from_ref(&report), args)?;
    println!(
        "connections open at the end: {}",
        args.http_connections.max(1) - open.available_permits()
    );
    Ok(if report.lost == 0 { 0 } else { 1 })
}

/// Sends on a pooled connection, or on a new one while fewer than the limit are open
/// (at the limit it waits for one to come back to the pool).
async fn send(
    pool: &Mutex<Vec<Conn>>,
    open: &tokio::sync::Semaphore,
    host: &str,
    request: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut conn = loop {
        if let Some(c) = pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            break c;
        }
        // One permit per open connection, given back when it breaks.
        if let Ok(permit) = open.try_acquire() {
            permit.forget();
            let connected = async {
                let stream = TcpStream::connect(host).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(BufReader::new(stream))
            }
            .await;
            match connected {
                Ok(c) => break c,
                Err(e) => {
                    open.add_permits(1);
                    return Err(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(TICK_MS)).await;
    };
    match exchange(&mut conn, request).await {
        Ok(answer) => {
            pool.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            Ok(answer)
        }
        Err(e) => {
            open.add_permits(1);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1:8080".into(), String::new())
        );
        assert_eq!(
            parse_base("http://h:1/api/").unwrap(),
            ("h:1".into(), "/api".into())
        );
        assert!(parse_base("https://h").is_err());
    }
}
