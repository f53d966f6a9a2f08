//! A fault-injecting TCP proxy for integration tests: put it between `spendguard serve`
//! (or any client) and PostgreSQL or the Kafka broker, then break the network on demand.
//!
//! ```ignore
//! let proxy = harness::proxy::Proxy::start(upstream);
//! // point the client at proxy.addr() instead of upstream ...
//! proxy.set_blackhole(true); // partition: bytes are read and dropped
//! proxy.heal();              // back to normal
//! proxy.cut();               // close every live connection (new ones are still accepted)
//! ```
//!
//! Faults can be changed at any time, from any thread, while connections are live:
//! - [`Proxy::cut`]: every live connection is closed now, on both sides (its task is
//!   aborted: an idle connection forwards nothing more once `cut` returns; one that was
//!   forwarding at that instant may finish that chunk); new connections are still
//!   accepted.
//! - [`Proxy::set_refuse`]: new connections are accepted and closed at once, as when
//!   the server is down (live ones are not touched: combine with `cut` for a crash).
//! - [`Proxy::set_delay`]: every chunk, in either direction, is forwarded no sooner than
//!   the current delay after it was read (lowering the delay, or `heal`, releases chunks
//!   that are waiting).
//! - [`Proxy::set_blackhole`]: bytes are read and dropped in both directions; connections
//!   stay open (a network partition, or a paused peer). Bytes dropped are lost for good:
//!   after `heal` only new bytes pass, so the protocol on top is usually desynchronised
//!   and the client has to reconnect, as after a real partition. A close or reset by one
//!   side is held back until the blackhole is lifted.
//! - [`Proxy::heal`]: no delay, no blackhole, no refuse.
//!
//! Dropping the `Proxy` stops the listener and closes every connection.
//!
//! The proxy runs on a runtime of its own (one worker thread), not on the test's: it
//! goes on forwarding while the test's thread blocks (rdkafka's synchronous metadata
//! calls, `std::thread::sleep`, `ServeProcess::start`), and `Proxy::start` works in sync
//! and async tests alike.
//!
//! # PostgreSQL and Kafka
//!
//! For PostgreSQL the proxy is fully effective: the client only ever talks to the address
//! it was given, so every byte goes through the proxy.
//!
//! The Kafka broker is different: a client uses the configured address only for its
//! first (bootstrap) connection; the broker's metadata answer then advertises the broker's
//! own address, and produce/fetch/group traffic goes to that advertised address, around
//! the proxy. A proxy in front of the shared broker (`scripts/tansu.sh`, which advertises
//! `127.0.0.1:9092`) therefore only affects bootstrap. To cut broker traffic a test must
//! start its own tansu, listening on a free port and advertising the proxy:
//!
//! ```text
//! tansu broker --cluster-id <id> \
//!   --listener-url tcp://127.0.0.1:<tansu port> \
//!   --advertised-listener-url tcp://127.0.0.1:<proxy port> \
//!   --storage-engine memory://tansu/
//! ```
//!
//! with the proxy started first with `127.0.0.1:<tansu port>` as its upstream (the proxy
//! connects upstream lazily, per accepted connection, so it can start before tansu).
//! [`spawn_tansu_behind_proxy`] does exactly that; give its `brokers` to the clients (and
//! as `SPENDGUARD_BROKERS` to `spendguard serve`). A topic lives in that broker's memory
//! only, so each such test creates its own topics.
//! [`spawn_persistent_tansu_behind_proxy`] keeps them in a SQLite file instead, so the
//! broker can be restarted ([`TansuBehindProxy::restart`]) without losing topics,
//! messages or committed group offsets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Bytes read from one side before they are forwarded to the other.
const CHUNK_BYTES: usize = 16 * 1024;

/// The faults in force; every connection reads them for each chunk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Faults {
    delay: Duration,
    blackhole: bool,
    refuse: bool,
}

struct Shared {
    faults: watch::Sender<Faults>,
    accepted: AtomicU64,
    /// Tasks of the live connections, by connection number.
    conns: Mutex<HashMap<u64, AbortHandle>>,
}

impl Shared {
    /// The live set, also after a panic elsewhere poisoned the lock (Drop must not panic).
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, AbortHandle>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A TCP proxy on 127.0.0.1 that forwards to one upstream address, with faults that the
/// test switches on and off. See the module documentation.
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    /// The proxy's own runtime (one worker thread): it keeps forwarding while the test's
    /// thread blocks. Taken by Drop.
    runtime: Option<Runtime>,
}

impl Proxy {
    /// Binds 127.0.0.1:0 and starts accepting; every accepted connection opens its own
    /// connection to `upstream` (a client whose upstream cannot be reached is closed).
    /// Callable from sync and async code: the proxy runs on its own runtime thread.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let shared = Arc::new(Shared {
            faults: watch::Sender::new(Faults::default()),
            accepted: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let accept_shared = shared.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("proxy listener");
            accept_loop(listener, upstream, accept_shared).await;
        });
        Proxy {
            addr,
            upstream,
            shared,
            runtime: Some(runtime),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Closes every live connection now, both sides. New connections are still accepted.
    pub fn cut(&self) {
        // Take the handles out first: a task that ends removes itself under the same lock.
        let handles: Vec<AbortHandle> = self.shared.conns().drain().map(|(_, h)| h).collect();
        for h in handles {
            h.abort();
        }
    }

    /// While true, new connections are accepted and closed at once (server down).
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.faults.send_modify(|f| f.refuse = refuse);
    }

    /// Every chunk, in either direction, waits this long before it is forwarded.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.faults.send_modify(|f| f.delay = delay);
    }

    /// While true, bytes are read and dropped in both directions; connections stay open.
    pub fn set_blackhole(&self, blackhole: bool) {
        self.shared.faults.send_modify(|f| f.blackhole = blackhole);
    }

    /// No delay, no blackhole, no refuse.
    pub fn heal(&self) {
        self.shared.faults.send_replace(Faults::default());
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now (accepted and not yet closed or cut).
    pub fn live(&self) -> usize {
        self.shared.conns().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        // Drops the listener and every connection task without waiting (allowed from
        // inside another runtime, unlike a plain drop of a runtime).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut next_id: u64 = 0;
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of file descriptors and the like: try again shortly.
                eprintln!("proxy: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.faults.borrow().refuse {
            drop(client);
            continue;
        }
        next_id += 1;
        let id = next_id;
        // Registered under the lock before the task can end and remove itself.
        let mut conns = shared.conns();
        let task = tokio::spawn(connection(id, client, upstream, shared.clone()));
        conns.insert(id, task.abort_handle());
        drop(conns);
    }
}

/// Removes the connection from the live set however its task ends (done, error, abort).
struct LiveGuard {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.shared.conns().remove(&self.id);
    }
}

async fn connection(id: u64, client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let _guard = LiveGuard {
        id,
        shared: shared.clone(),
    };
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // The first error in either direction closes both; an end of stream is passed on as
    // a half close and the other direction goes on.
    let _ = tokio::try_join!(
        pipe(cr, sw, shared.faults.subscribe()),
        pipe(sr, cw, shared.faults.subscribe()),
    );
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let read = from.read(&mut buf).await;
        if matches!(read, Ok(0) | Err(_)) {
            // A close or reset does not cross a partition either: it is passed on (as a
            // half close, or by closing both sides) once the blackhole is lifted.
            let _ = faults.wait_for(|f| !f.blackhole).await;
        }
        let n = read?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let read_at = Instant::now();
        // Wait out the delay in force (re-read when the faults change); drop the chunk if
        // a blackhole is on at any point before it is sent.
        let forward = loop {
            let f = *faults.borrow_and_update();
            if f.blackhole {
                break false;
            }
            let due = read_at + f.delay;
            if Instant::now() >= due {
                break true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                changed = faults.changed() => {
                    if changed.is_err() {
                        // The proxy is gone; its Drop aborts this task anyway.
                        tokio::time::sleep_until(due).await;
                    }
                }
            }
        };
        if forward {
            to.write_all(&buf[..n]).await?;
        }
    }
}

/// A tansu broker of one test that clients can reach only through `proxy`: it listens on
/// a free port of 127.0.0.1 and advertises the proxy's address, so bootstrap, metadata,
/// produce, fetch and group traffic all pass through the proxy's faults. Memory storage,
/// or SQLite in the test's directory ([`spawn_persistent_tansu_behind_proxy`]), which
/// [`TansuBehindProxy::restart`] keeps. Dropping it kills the broker and stops the proxy.
pub struct TansuBehindProxy {
    pub proxy: Proxy,
    /// `bootstrap.servers` for clients: the proxy's address.
    pub brokers: String,
    /// Where the broker listens (the proxy's upstream); clients must not use it.
    pub direct: SocketAddr,
    pub child: std::process::Child,
    /// The broker's stdout and stderr (every start appends to it).
    pub log: PathBuf,
    bin: PathBuf,
    /// The broker's working directory: tansu resolves a `sqlite://` path against it.
    dir: PathBuf,
    storage: &'static str,
}

impl TansuBehindProxy {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the broker (SIGKILL, or SIGTERM with `graceful`, SIGKILL if it has not exited
    /// after 5 s), keeps it down for `down`, then starts it again on the same port with
    /// the same storage and waits until the port answers. Clients' connections through
    /// the proxy are closed when the broker's side closes.
    pub fn restart(&mut self, graceful: bool, down: Duration) {
        if graceful {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = start_tansu(
            &self.bin,
            self.direct,
            self.proxy.addr(),
            self.storage,
            &self.dir,
            &self.log,
        );
        wait_for_tansu(&mut self.child, self.direct, &self.log);
    }
}

impl Drop for TansuBehindProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waiting for a started broker to open its port: 300 tries of 100 ms.
const TANSU_START_TRIES: u32 = 300;

/// The `tansu` binary: on `PATH`, else `$CARGO_HOME/bin` (where `scripts/tansu.sh
/// install` puts it).
pub fn tansu_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("tansu"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin").join("tansu"));
    on_path.chain(cargo_home).find(|p| p.is_file())
}

/// Starts a proxy and a tansu broker behind it (see [`TansuBehindProxy`]), its log in
/// `dir`, and waits until the broker's port answers. Without a `tansu` binary: fails
/// under `CI=true`, otherwise prints why the test is skipped and returns `None`.
pub fn spawn_tansu_behind_proxy(dir: &Path) -> Option<TansuBehindProxy> {
    spawn_with_storage(dir, "memory://tansu/")
}

/// Like [`spawn_tansu_behind_proxy`], with the broker's topics, offsets and consumer
/// groups in a SQLite file in `dir`, so they survive [`TansuBehindProxy::restart`].
pub fn spawn_persistent_tansu_behind_proxy(dir: &Path) -> Option<TansuBehindProxy> {
    // tansu 0.6 joins the URL's path to its working directory (set to `dir`), whatever
    // the number of slashes.
    spawn_with_storage(dir, "sqlite:///tansu.db")
}

fn spawn_with_storage(dir: &Path, storage: &'static str) -> Option<TansuBehindProxy> {
    let Some(bin) = tansu_bin() else {
        super::skip_or_fail("the tansu binary is not installed (scripts/tansu.sh install)");
        return None;
    };
    // A free port for the broker: taken from the kernel, released, then given to tansu.
    let direct = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port for tansu");
    let proxy = Proxy::start(direct);
    let log = dir.join(format!("tansu-{}.log", direct.port()));
    let child = start_tansu(&bin, direct, proxy.addr(), storage, dir, &log);
    let mut tansu = TansuBehindProxy {
        brokers: proxy.addr().to_string(),
        proxy,
        direct,
        child,
        log,
        bin,
        dir: dir.to_path_buf(),
        storage,
    };
    wait_for_tansu(&mut tansu.child, direct, &tansu.log);
    Some(tansu)
}

fn start_tansu(
    bin: &Path,
    direct: SocketAddr,
    advertised: SocketAddr,
    storage: &str,
    dir: &Path,
    log: &Path,
) -> std::process::Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("tansu log file");
    let err = out.try_clone().expect("tansu log file");
    std::process::Command::new(bin)
        .arg("broker")
        .args([
            "--cluster-id",
            &format!("spendguard-test-{}", direct.port()),
        ])
        .args(["--listener-url", &format!("tcp://{direct}")])
        .args(["--advertised-listener-url", &format!("tcp://{advertised}")])
        .args(["--storage-engine", storage])
        .current_dir(dir)
        // tansu logs every request at info.
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

fn wait_for_tansu(child: &mut std::process::Child, direct: SocketAddr, log: &Path) {
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    for _ in 0..TANSU_START_TRIES {
        if std::net::TcpStream::connect_timeout(&direct, Duration::from_millis(100)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tansu exited with {status}:\n{}", log_text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("tansu did not open {direct} in time:\n{}", log_text());
}
