//! TLS set-up made at test time (issue 13 item 9): a test CA and certificates signed by
//! it ([`TestCa`]), and a PostgreSQL cluster of its own with `ssl=on` and
//! `hostssl`-only access ([`TlsPostgres`]), started from the installed server binaries
//! in a temporary directory and stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (what a client trusts: `sslrootcert`, `ssl.ca.location`).
    pub cert_pem: String,
}

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose common name is `cn` (PostgreSQL's `cert` method takes
    /// the role from it).
    pub fn client(&self, cn: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/name`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.cert_pem).expect("write CA");
        path
    }
}

impl Issued {
    /// Writes `dir/{stem}.crt` and `dir/{stem}.key` (mode 0600); returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        (cert, key)
    }
}

/// A free TCP port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Directory of the newest installed PostgreSQL server binaries (`initdb`, `pg_ctl`).
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// How the server's pg_hba.conf admits clients: TLS only (`hostssl`); role `certuser`
/// only with a client certificate of the test CA (`cert`), every other role trusted
/// once on TLS. Nothing without TLS.
const PG_HBA: &str = "local all all trust\n\
hostssl all certuser 127.0.0.1/32 cert\n\
hostssl all all 127.0.0.1/32 trust\n";

/// A PostgreSQL cluster of its own (`initdb` in a temp dir, a free port), `ssl=on` with a
/// certificate from `ca` for `localhost` only, reachable only over TLS; stopped on drop.
pub struct TlsPostgres {
    pub port: u16,
    /// The test's directory (certificates for the client can go here too).
    pub dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

impl TlsPostgres {
    /// Starts the cluster, or returns None after [`super::skip_or_fail`] when this machine
    /// cannot run one (no server binaries, no `postgres` user to run it as root).
    pub fn start(ca: &TestCa) -> Option<TlsPostgres> {
        let Some(bin) = postgres_bin_dir() else {
            super::skip_or_fail(
                "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (scripts/postgres.sh installs them)",
            );
            return None;
        };
        let as_postgres = is_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let port = free_port();
        let pg = TlsPostgres {
            port,
            dir,
            data,
            bin,
            as_postgres,
        };
        if as_postgres {
            // initdb refuses to run as root: the cluster belongs to the postgres user.
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status();
            if !owned.is_ok_and(|s| s.success()) {
                super::skip_or_fail(
                    "running as root and cannot chown the test cluster to user postgres",
                );
                return None;
            }
        }
        let init = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&pg.data)
            .output()
            .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let (cert, key) = ca.server(&["localhost"]).write(&pg.data, "server");
        let root = ca.write(&pg.data, "root.crt");
        std::fs::write(pg.data.join("pg_hba.conf"), PG_HBA).expect("pg_hba.conf");
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data.join("postgresql.conf"))
            .expect("postgresql.conf");
        use std::io::Write;
        writeln!(
            conf,
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{sock}'\n\
             ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\nssl_ca_file = '{root}'\n\
             fsync = off\nmax_connections = 40\n",
            sock = pg.dir.path().display(),
            cert = cert.display(),
            key = key.display(),
            root = root.display(),
        )
        .expect("write postgresql.conf");
        drop(conf);
        if as_postgres {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status();
        }
        let log = pg.dir.path().join("postgres.log");
        let started = pg
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-D"])
            .arg(&pg.data)
            .arg("-l")
            .arg(&log)
            .arg("start")
            .output()
            .expect("run pg_ctl start");
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // The superuser creates what the tests need over the cluster's own socket.
        let psql = Command::new(pg.bin.join("psql"))
            .args(["-h"])
            .arg(pg.dir.path())
            .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", "CREATE ROLE certuser LOGIN"])
            .output()
            .expect("run psql");
        assert!(
            psql.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&psql.stderr)
        );
        Some(pg)
    }

    /// A server binary, run as the postgres user when this process is root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// `postgres://{user}@{host}:{port}/postgres?{query}`.
    pub fn url(&self, user: &str, host: &str, query: &str) -> String {
        format!("postgres://{user}@{host}:{}/postgres?{query}", self.port)
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-w", "-t", "20", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}

/// Upper bound of one connection attempt in these tests.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A tansu broker of its own that requires SASL (`--authentication`: SCRAM-SHA-256/512
/// and PLAIN, over plain TCP: tansu 0.6 does not serve TLS), with user `svc` whose
/// SCRAM-SHA-512 password is [`SaslTansu::PASSWORD`]. tansu creates users only for a
/// client it has admitted, so the user is created on a first run without
/// authentication, over the same SQLite storage. Stopped on drop.
pub struct SaslTansu {
    pub brokers: String,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl SaslTansu {
    pub const USER: &'static str = "svc";
    pub const PASSWORD: &'static str = "svc-scram-password-7f3a";

    /// Starts it, or returns None after [`super::skip_or_fail`] without a tansu binary.
    pub fn start() -> Option<SaslTansu> {
        let Some(bin) = super::proxy::tansu_bin() else {
            super::skip_or_fail("the tansu binary is not installed (scripts/tansu.sh install)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let brokers = format!("127.0.0.1:{port}");
        let spawn = |authentication: bool, log: &str| {
            let out = std::fs::File::create(dir.path().join(log)).expect("tansu log");
            let err = out.try_clone().expect("tansu log");
            let mut c = Command::new(&bin);
            c.current_dir(dir.path())
                .arg("broker")
                .args(["--cluster-id", &format!("spendguard-sasl-{port}")])
                .args(["--listener-url", &format!("tcp://{brokers}")])
                .args(["--advertised-listener-url", &format!("tcp://{brokers}")])
                // Relative to the working directory: the temp dir.
                .args(["--storage-engine", "sqlite://tansu.db"])
                .arg("--silent")
                .env("RUST_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err);
            if authentication {
                c.arg("--authentication");
            }
            let mut child = c.spawn().expect("spawn tansu");
            wait_for_port(&brokers, &mut child, &dir.path().join(log));
            child
        };
        let mut open = spawn(false, "tansu-open.log");
        let created = Command::new(&bin)
            .args(["user", "create", "--broker", &format!("tcp://{brokers}")])
            .args([Self::USER, Self::PASSWORD, "--mechanism", "scram512"])
            .output()
            .expect("run tansu user create");
        let _ = open.kill();
        let _ = open.wait();
        assert!(
            created.status.success(),
            "tansu user create failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let child = spawn(true, "tansu-sasl.log");
        Some(SaslTansu {
            brokers,
            dir,
            child,
        })
    }
}

fn wait_for_port(addr: &str, child: &mut std::process::Child, log: &Path) {
    let sock: std::net::SocketAddr = addr.parse().expect("address");
    for _ in 0..300 {
        if std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(100)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "tansu exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("tansu did not open {addr} in time");
}

impl Drop for SaslTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS client that trusts only `ca_pem` (no public roots).
pub fn tls_client(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// One HTTP/1.1 GET over TLS to `addr` as server name `name`; returns (status, body) or
/// the TLS / I/O error.
pub async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    name: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server_name =
        rustls::pki_types::ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
    let mut tls = connector.connect(server_name, tcp).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // A server may close without close_notify after `Connection: close`: what was read
    // counts.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}
