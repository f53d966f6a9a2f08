//! rdkafka against the real broker (tansu): create topics, produce, consume from a
//! group and from a manual assignment, and dead-letter with headers. Also the self-tests
//! of the fault-injecting proxy of `tests/harness/proxy.rs` (echo server, PostgreSQL, and
//! a tansu of the test's own behind it).

use crate::harness::proxy::{Proxy, spawn_persistent_tansu_behind_proxy, spawn_tansu_behind_proxy};
use crate::harness::serve::read_until;
use crate::harness::{self, serial};
use futures::StreamExt;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Headers;
use spendguard::bus::{self, dlq};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MESSAGES: usize = 30;
const RECEIVE_TIMEOUT_MS: u64 = 20_000;

#[tokio::test]
async fn create_produce_consume_round_trip() {
    if !harness::require_broker() {
        return;
    }
    let _serial = serial::shared().await;
    let brokers = harness::brokers();
    let topic = harness::unique("smoke.");
    bus::ensure_topics(&brokers, &[(topic.clone(), 3)])
        .await
        .expect("create topic");
    // Creating again is a no-op, not an error.
    bus::ensure_topics(&brokers, &[(topic.clone(), 3)])
        .await
        .expect("create topic twice");
    assert_eq!(bus::partition_count(&brokers, &topic).unwrap(), Some(3));

    let producer = bus::producer(&brokers).unwrap();
    let mut sent_partition: BTreeMap<String, i32> = BTreeMap::new();
    for i in 0..MESSAGES {
        let key = format!("agent-{}", i % 5);
        let (partition, _) = bus::publish(
            &producer,
            &topic,
            key.as_bytes(),
            format!("m{i}").as_bytes(),
            None,
        )
        .await
        .expect("publish");
        // The same key always lands on the same partition (per-agent ordering relies on it).
        assert_eq!(*sent_partition.entry(key).or_insert(partition), partition);
    }

    let group = harness::unique("smoke-group-");
    let consumer = bus::group_consumer(
        &brokers,
        &group,
        "smoke",
        spendguard::config::DEFAULT_MAX_POLL_INTERVAL_MS,
    )
    .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    let mut stream = consumer.stream();
    while seen.len() < MESSAGES {
        let msg = tokio::time::timeout(Duration::from_millis(RECEIVE_TIMEOUT_MS), stream.next())
            .await
            .expect("timed out waiting for messages from the group consumer")
            .expect("stream ended")
            .expect("consume error");
        seen.push(String::from_utf8(msg.payload().unwrap().to_vec()).unwrap());
        consumer.store_offset_from_message(&msg).unwrap();
    }
    drop(stream);
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    seen.sort();
    let mut expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);

    // Manual assignment from the beginning reads every partition without a group.
    let reader = bus::standalone_consumer(&brokers).unwrap();
    assert_eq!(
        bus::assign_all(&reader, &brokers, &topic, rdkafka::Offset::Beginning).unwrap(),
        3
    );
    let mut count = 0;
    let mut stream = reader.stream();
    while count < MESSAGES {
        tokio::time::timeout(Duration::from_millis(RECEIVE_TIMEOUT_MS), stream.next())
            .await
            .expect("timed out waiting for messages from the assigned consumer")
            .unwrap()
            .unwrap();
        count += 1;
    }
}

#[tokio::test]
async fn dead_letters_keep_bytes_and_carry_the_error() {
    if !harness::require_broker() {
        return;
    }
    let _serial = serial::shared().await;
    let brokers = harness::brokers();
    let topic = harness::unique("smoke-dlq.");
    bus::ensure_topics(&brokers, &[(topic.clone(), 1)])
        .await
        .unwrap();
    let producer = bus::producer(&brokers).unwrap();
    let original: &[u8] = &[0xff, 0x00, b'{', 0xfe];
    let letter = dlq::DeadLetter {
        code: "invalid_utf8",
        message: "message is not valid UTF-8",
        field: None,
        source_topic: "spend.intents",
        source_partition: 2,
        source_offset: 41,
        instance: "smoke",
    };
    dlq::send(&producer, &topic, Some(b"agent-1"), original, &letter, None)
        .await
        .unwrap();

    let reader = bus::standalone_consumer(&brokers).unwrap();
    bus::assign_all(&reader, &brokers, &topic, rdkafka::Offset::Beginning).unwrap();
    let msg = tokio::time::timeout(Duration::from_millis(RECEIVE_TIMEOUT_MS), reader.recv())
        .await
        .expect("timed out waiting for the dead letter")
        .unwrap();
    assert_eq!(msg.payload().unwrap(), original);
    assert_eq!(msg.key().unwrap(), b"agent-1");
    let headers = msg.headers().expect("dead letter has headers");
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(get(dlq::HEADER_ERROR_CODE).as_deref(), Some("invalid_utf8"));
    assert_eq!(get(dlq::HEADER_SOURCE_OFFSET).as_deref(), Some("41"));
    assert_eq!(get(dlq::HEADER_SOURCE_PARTITION).as_deref(), Some("2"));
}

// ---- The fault-injecting proxy (tests/harness/proxy.rs) ----

/// Generous bound for what must happen (a byte that passes, a close that arrives).
const PROXY_WAIT_MS: u64 = 5_000;
/// How long a read waits to show that nothing passes (no upper bound is asserted).
const SILENCE_MS: u64 = 300;

/// A TCP server that sends back every byte it receives.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `msg` and reads the same number of bytes back.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.expect("write through the proxy");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(
        Duration::from_millis(PROXY_WAIT_MS),
        s.read_exact(&mut back),
    )
    .await
    .expect("echo did not come back through the proxy")
    .expect("read through the proxy");
    back
}

/// True when the peer closed `s`: a read returns end of stream or an error (reset).
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(PROXY_WAIT_MS), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn wait_live(proxy: &Proxy, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(PROXY_WAIT_MS);
    while proxy.live() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "proxy has {} live connections, expected {n}",
            proxy.live()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn proxy_passes_bytes_both_ways_and_counts_connections() {
    let _serial = serial::shared().await;
    let proxy = Proxy::start(echo_server().await);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"hello").await, b"hello");
    // More than one chunk, written and read at the same time.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w
    });
    let mut back = vec![0u8; big.len()];
    tokio::time::timeout(
        Duration::from_millis(PROXY_WAIT_MS),
        r.read_exact(&mut back),
    )
    .await
    .expect("large echo timed out")
    .unwrap();
    assert!(back == big, "large echo came back different");
    let w = writer.await.unwrap();
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.live(), 1);

    let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut second, b"two").await, b"two");
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.live(), 2);
    drop((r, w));
    wait_live(&proxy, 1).await;
    drop(second);
    wait_live(&proxy, 0).await;
}

#[tokio::test]
async fn proxy_delay_adds_at_least_the_delay_each_way() {
    let _serial = serial::shared().await;
    let delay = Duration::from_millis(200);
    let proxy = Proxy::start(echo_server().await);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"warm").await, b"warm");

    proxy.set_delay(delay);
    let started = std::time::Instant::now();
    assert_eq!(round_trip(&mut s, b"slow").await, b"slow");
    let took = started.elapsed();
    // Delayed on the way in and again on the way back.
    assert!(
        took >= 2 * delay,
        "round trip took {took:?} with a delay of {delay:?}"
    );

    proxy.heal();
    assert_eq!(round_trip(&mut s, b"fast").await, b"fast");
}

#[tokio::test]
async fn proxy_blackhole_drops_bytes_until_healed() {
    let _serial = serial::shared().await;
    let proxy = Proxy::start(echo_server().await);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut s, b"before").await, b"before");

    proxy.set_blackhole(true);
    s.write_all(b"lost").await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_millis(SILENCE_MS), s.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "a read through a blackhole returned {read:?}"
    );
    assert_eq!(proxy.live(), 1, "a blackhole keeps the connection open");

    proxy.heal();
    // What was sent during the blackhole is gone; new bytes pass.
    assert_eq!(round_trip(&mut s, b"after").await, b"after");

    // A close is held back too: the echo server closes its side when it sees ours.
    proxy.set_blackhole(true);
    s.shutdown().await.unwrap();
    let read = tokio::time::timeout(Duration::from_millis(SILENCE_MS), s.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "a close crossed the blackhole: the read returned {read:?}"
    );
    proxy.heal();
    assert!(closed(&mut s).await, "the close did not pass after heal");
    wait_live(&proxy, 0).await;
}

#[tokio::test]
async fn proxy_cut_closes_live_connections_and_accepts_new_ones() {
    let _serial = serial::shared().await;
    let upstream = echo_server().await;
    let proxy = Proxy::start(upstream);
    let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut a, b"a").await, b"a");
    assert_eq!(round_trip(&mut b, b"b").await, b"b");

    proxy.cut();
    assert!(closed(&mut a).await, "connection a still open after cut");
    assert!(closed(&mut b).await, "connection b still open after cut");
    wait_live(&proxy, 0).await;

    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut c, b"c").await, b"c");
    assert_eq!(proxy.accepted(), 3);
    assert_eq!(proxy.live(), 1);
}

#[tokio::test]
async fn proxy_refuse_closes_new_connections_at_once() {
    let _serial = serial::shared().await;
    let proxy = Proxy::start(echo_server().await);
    let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut live, b"up").await, b"up");

    proxy.set_refuse(true);
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        closed(&mut refused).await,
        "a refused connection stayed open"
    );
    assert_eq!(proxy.accepted(), 2);
    // Connections made before are not touched.
    assert_eq!(round_trip(&mut live, b"still").await, b"still");

    proxy.heal();
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut again, b"back").await, b"back");
}

#[tokio::test]
async fn proxy_drop_closes_everything() {
    let _serial = serial::shared().await;
    let proxy = Proxy::start(echo_server().await);
    let addr = proxy.addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut s, b"x").await, b"x");
    drop(proxy);
    assert!(
        closed(&mut s).await,
        "connection still open after the proxy was dropped"
    );
    // The listener is gone: a connection is refused, or closed at once if the kernel
    // completed it before the listening socket was released.
    if let Ok(mut late) = TcpStream::connect(addr).await {
        assert!(closed(&mut late).await, "the dropped proxy still serves");
    }
}

#[tokio::test]
async fn proxy_in_front_of_postgres_cut_breaks_the_connection() {
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use std::str::FromStr;

    if !harness::require_postgres() {
        return;
    }
    let _serial = serial::shared().await;
    let direct = PgConnectOptions::from_str(&harness::database_url()).expect("DATABASE_URL");
    let upstream = tokio::net::lookup_host((direct.get_host(), direct.get_port()))
        .await
        .expect("resolve the PostgreSQL host")
        .next()
        .expect("an address for the PostgreSQL host");
    let proxy = Proxy::start(upstream);
    let via_proxy = direct
        .clone()
        .host(&proxy.addr().ip().to_string())
        .port(proxy.addr().port());

    let mut conn = PgConnection::connect_with(&via_proxy)
        .await
        .expect("connect to PostgreSQL through the proxy");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .expect("SELECT 1 through the proxy");
    assert_eq!(one, 1);
    assert_eq!(proxy.live(), 1);

    proxy.cut();
    let after_cut = tokio::time::timeout(
        Duration::from_millis(PROXY_WAIT_MS),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut conn),
    )
    .await
    .expect("a query on a cut connection hung instead of failing");
    assert!(
        after_cut.is_err(),
        "a query on a cut connection returned {after_cut:?}"
    );
    drop(conn);

    proxy.heal();
    let mut again = PgConnection::connect_with(&via_proxy)
        .await
        .expect("reconnect to PostgreSQL through the proxy after heal");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut again)
        .await
        .expect("SELECT 1 on the new connection");
    assert_eq!(one, 1);
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test]
async fn proxy_in_front_of_own_tansu_carries_produce_and_fetch() {
    let _serial = serial::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(tansu) = spawn_tansu_behind_proxy(dir.path()) else {
        return;
    };
    let brokers = tansu.brokers.clone();
    let topic = harness::unique("proxied.");
    bus::ensure_topics(&brokers, &[(topic.clone(), 1)])
        .await
        .unwrap_or_else(|e| panic!("create topic through the proxy: {e}\n{}", tansu.log_text()));
    let producer = bus::producer(&brokers).unwrap();
    bus::publish(&producer, &topic, b"k", b"before", None)
        .await
        .expect("publish through the proxy");

    // The broker advertises the proxy, so produce traffic goes through it: with every
    // connection cut and new ones refused, a publish cannot complete...
    tansu.proxy.set_refuse(true);
    tansu.proxy.cut();
    let during = bus::publish(&producer, &topic, b"k", b"during", None);
    tokio::pin!(during);
    let stuck = tokio::time::timeout(Duration::from_millis(1_000), &mut during).await;
    assert!(
        stuck.is_err(),
        "a publish completed while the broker was unreachable: {stuck:?}"
    );
    // ...and it completes once the network is back (the client reconnects).
    tansu.proxy.heal();
    tokio::time::timeout(Duration::from_millis(RECEIVE_TIMEOUT_MS), &mut during)
        .await
        .expect("publish did not complete after heal")
        .expect("publish after heal");

    let read = read_until(&brokers, &topic, RECEIVE_TIMEOUT_MS, |m| m.len() >= 2).await;
    let payloads: Vec<&[u8]> = read
        .iter()
        .map(|m| m.payload().unwrap_or_default())
        .collect();
    assert_eq!(payloads, [&b"before"[..], &b"during"[..]]);
    assert!(tansu.proxy.accepted() >= 2, "clients bypassed the proxy");
}

// ---- resuming from a committed offset inside a record batch ----

/// Records per batch in [`resume_inside_a_batch`], and where the first member stops.
const BATCH_RECORDS: i64 = 10;
const FIRST_MEMBER_HANDLES: i64 = 5;

/// Sends `n` records to partition 0 of `topic` at once, with a linger long enough that
/// they travel as one record batch; returns their offsets.
async fn produce_one_batch(brokers: &str, topic: &str, first: i64, n: i64) -> Vec<i64> {
    let producer: rdkafka::producer::FutureProducer = bus::client_config(brokers)
        .set("linger.ms", "50")
        .create()
        .unwrap();
    let pending: Vec<_> = (first..first + n)
        .map(|i| {
            let body = format!("m{i}");
            let record = rdkafka::producer::FutureRecord::to(topic)
                .partition(0)
                .key("k")
                .payload(body.as_bytes());
            producer.send_result(record).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    let mut offsets = Vec::new();
    for delivery in pending {
        let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        offsets.push(delivered.offset);
    }
    offsets
}

/// Offsets `consumer` receives until `want` of them passed `admit` or the wait ends
/// (serve's workers get what `GroupContext::admit` lets through).
async fn offsets_received<C: rdkafka::consumer::ConsumerContext + 'static>(
    consumer: &rdkafka::consumer::StreamConsumer<C>,
    admit: impl Fn(&str, i32, i64) -> bool,
    want: usize,
    wait_ms: u64,
) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let mut offsets = Vec::new();
    while offsets.len() < want {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) if admit(m.topic(), m.partition(), m.offset()) => offsets.push(m.offset()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("consume error: {e}"),
            Err(_) => break,
        }
    }
    offsets
}

/// Two batches of [`BATCH_RECORDS`] on one partition; a member of a group handles the
/// first [`FIRST_MEMBER_HANDLES`] records, commits and leaves; then a plain librdkafka
/// member of the same group (no commit) and a member as `serve` makes it
/// (`bus::group_consumer`, messages through `GroupContext::admit`) resume from the
/// committed offset, inside the first batch. Returns what each received.
async fn resume_inside_a_batch(brokers: &str) -> (Vec<i64>, Vec<i64>) {
    let topic = harness::unique("resume.");
    bus::ensure_topics(brokers, &[(topic.clone(), 1)])
        .await
        .expect("create topic");
    let first = produce_one_batch(brokers, &topic, 0, BATCH_RECORDS).await;
    let second = produce_one_batch(brokers, &topic, BATCH_RECORDS, BATCH_RECORDS).await;
    assert_eq!(first, (0..BATCH_RECORDS).collect::<Vec<_>>());
    assert_eq!(
        second,
        (BATCH_RECORDS..2 * BATCH_RECORDS).collect::<Vec<_>>()
    );
    let group = harness::unique("resume-group-");
    let poll = spendguard::config::DEFAULT_MAX_POLL_INTERVAL_MS;

    let handler = bus::group_consumer(brokers, &group, "resume-a", poll).unwrap();
    handler.subscribe(&[&topic]).unwrap();
    let handled = offsets_received(
        &handler,
        |_, _, _| true,
        FIRST_MEMBER_HANDLES as usize,
        RECEIVE_TIMEOUT_MS,
    )
    .await;
    assert_eq!(handled, (0..FIRST_MEMBER_HANDLES).collect::<Vec<_>>());
    for offset in &handled {
        handler.store_offset(&topic, 0, *offset).unwrap();
    }
    handler.commit_consumer_state(CommitMode::Sync).unwrap();
    drop(handler); // closes the consumer: LeaveGroup

    let rest = (2 * BATCH_RECORDS - FIRST_MEMBER_HANDLES) as usize;
    // What the broker hands a member that starts at the committed offset: printed, not
    // asserted (it is the broker's behaviour, not spendguard's).
    let plain: rdkafka::consumer::StreamConsumer = bus::client_config(brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", bus::fetch_wait_max_ms())
        .create()
        .unwrap();
    plain.subscribe(&[&topic]).unwrap();
    let plain_got = offsets_received(&plain, |_, _, _| true, rest, 10_000).await;
    drop(plain);

    let serve_like = bus::group_consumer(brokers, &group, "resume-b", poll).unwrap();
    serve_like.subscribe(&[&topic]).unwrap();
    let group_context = serve_like.context().clone();
    let serve_got = offsets_received(
        &serve_like,
        |t, p, o| group_context.admit(t, p, o),
        rest,
        RECEIVE_TIMEOUT_MS,
    )
    .await;
    harness::visible(&format!(
        "resume inside a batch on {brokers}: committed {FIRST_MEMBER_HANDLES}; a plain member received {plain_got:?}; serve's consumer received {serve_got:?}"
    ));
    (plain_got, serve_got)
}

/// tansu 0.6's default storage (memory://, the shared broker of scripts/tansu.sh)
/// answers a fetch with the batches whose base offset is at or after the fetch offset,
/// so a member resuming at a committed offset inside a batch never gets the rest of it
/// (docs/reliability.md). serve's consumer starts before the committed offset and drops
/// what the group handled: it receives every record after the committed offset, once.
#[tokio::test]
async fn a_member_resuming_inside_a_record_batch_receives_the_rest_of_it() {
    if !harness::require_broker() {
        return;
    }
    let _serial = serial::shared().await;
    let (_, serve_got) = resume_inside_a_batch(&harness::brokers()).await;
    assert_eq!(
        serve_got,
        (FIRST_MEMBER_HANDLES..2 * BATCH_RECORDS).collect::<Vec<_>>()
    );
}

/// The same on tansu's SQLite storage (the chaos run's `--broker-faults` broker).
#[tokio::test]
async fn a_member_resuming_inside_a_record_batch_receives_the_rest_of_it_on_sqlite() {
    let _serial = serial::shared().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(tansu) = spawn_persistent_tansu_behind_proxy(dir.path()) else {
        return;
    };
    let (_, serve_got) = resume_inside_a_batch(&tansu.brokers).await;
    assert_eq!(
        serve_got,
        (FIRST_MEMBER_HANDLES..2 * BATCH_RECORDS).collect::<Vec<_>>(),
        "{}",
        tansu.log_text()
    );
}
