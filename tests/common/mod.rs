//! Test harness: runs the real `starling` binary with its own data dir and
//! port-0 listeners on loopback, and a small XMPP client that speaks to it
//! over real sockets.
#![allow(dead_code)]

pub mod prosody;

use std::io::{BufRead, BufReader as StdBufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use starling::base::xml::{Element, StreamEvent, XmlLimits, XmlStream};
use starling::model::sasl::credentials::ScramHash;
use starling::model::sasl::scram::client::ScramClient;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};

pub const DOMAIN: &str = "localhost";

/// Multi-process cluster tests take turns: on a 2-core machine, several
/// clusters at once only measure the scheduler.
pub static CLUSTER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
pub const WAIT: Duration = Duration::from_secs(10);

/// The server binary: this build's, or `STARLING_TEST_BIN` (to run a test
/// against an older build, e.g. to see a regression test fail before a fix).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("STARLING_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_starling").to_string())
    })
}

/// Mutual TLS on the test clusters' mesh, as `starling cluster up` sets it
/// up: one CA and certificates for nodes 1-9 and the admin commands, made
/// once per run by `starling cluster certs`. The files of node `id`
/// (`None`: the admin certificate); `None` when
/// `STARLING_TEST_PLAIN_MESH=1` leaves the mesh plain (for an older build
/// under `STARLING_TEST_BIN`).
pub fn mesh_certs(id: Option<u64>) -> Option<starling::node::mesh_certs::NodeFiles> {
    if std::env::var("STARLING_TEST_PLAIN_MESH").is_ok_and(|v| v == "1") {
        return None;
    }
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mesh-certs");
        let out = Command::new(env!("CARGO_BIN_EXE_starling"))
            .args(["cluster", "certs", "--nodes", "1,2,3,4,5,6,7,8,9", "--dir"])
            .arg(&dir)
            .env_clear()
            .output()
            .expect("starling cluster certs");
        assert!(
            out.status.success(),
            "starling cluster certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    });
    Some(match id {
        Some(id) => starling::node::mesh_certs::node_files(dir, id),
        None => starling::node::mesh_certs::admin_files(dir),
    })
}

/// The `[cluster] tls_*` settings for [`mesh_certs`] of `id`.
pub fn mesh_tls_env(id: Option<u64>) -> Vec<(&'static str, String)> {
    let Some(f) = mesh_certs(id) else {
        return Vec::new();
    };
    vec![
        ("STARLING_CLUSTER_TLS_CA", f.ca.display().to_string()),
        ("STARLING_CLUSTER_TLS_CERT", f.cert.display().to_string()),
        ("STARLING_CLUSTER_TLS_KEY", f.key.display().to_string()),
    ]
}

/// What a cluster command presents to a test cluster's mesh: `secret`
/// and the admin certificate of [`mesh_certs`].
pub fn mesh_auth(secret: &str) -> starling_cluster::MeshAuth {
    let tls = mesh_certs(None).map(|f| {
        starling_cluster::MeshTls::load(&f.ca, &f.cert, &f.key).expect("the admin certificate")
    });
    starling_cluster::MeshAuth::new(secret, tls)
}

pub struct Server {
    child: Option<Child>,
    pub c2s: SocketAddr,
    pub c2s_tls: Option<SocketAddr>,
    /// The node's cluster mesh address.
    pub mesh: SocketAddr,
    /// The HTTP (health) address.
    pub http: SocketAddr,
    /// Server-to-server listener (federation), if on.
    pub s2s: Option<SocketAddr>,
    /// External component listener (XEP-0114), if on.
    pub component: Option<SocketAddr>,
    /// Direct TLS server-to-server listener (XEP-0368), if on.
    pub s2s_tls: Option<SocketAddr>,
    /// HTTPS (and wss), if `STARLING_HTTP_TLS_LISTEN` turned it on.
    pub https: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    stderr_log: std::path::PathBuf,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Start with extra `STARLING_*` settings.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Server::start_in(dir, env)
    }

    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        let stderr_log = dir.path().join("stderr.log");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("STARLING_DATA_DIR", dir.path().join("data"))
            .env("STARLING_C2S_LISTEN", "127.0.0.1:0")
            .env("STARLING_C2S_DIRECT_TLS_LISTEN", "127.0.0.1:0")
            .env("STARLING_CLUSTER_LISTEN", "127.0.0.1:0")
            .env("STARLING_HTTP_LISTEN", "127.0.0.1:0")
            .env("STARLING_S2S_LISTEN", "127.0.0.1:0")
            .env("STARLING_COMPONENT_LISTEN", "127.0.0.1:0")
            .env("STARLING_LOG_LEVEL", "debug")
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&stderr_log)
                    .expect("log file"),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn starling");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = StdBufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
        };
        let c2s = field("c2s")
            .and_then(|a| a.parse().ok())
            .expect("c2s address on ready line");
        let c2s_tls = field("c2s_tls").and_then(|a| a.parse().ok());
        let mesh = field("cluster")
            .and_then(|a| a.parse().ok())
            .expect("cluster address on ready line");
        let http = field("http")
            .and_then(|a| a.parse().ok())
            .expect("http address on ready line");
        let s2s = field("s2s").and_then(|a| a.parse().ok());
        let component = field("component").and_then(|a| a.parse().ok());
        let s2s_tls = field("s2s_tls").and_then(|a| a.parse().ok());
        let https = field("https").and_then(|a| a.parse().ok());
        Server {
            child: Some(child),
            c2s,
            c2s_tls,
            mesh,
            http,
            s2s,
            component,
            s2s_tls,
            https,
            dir,
            stderr_log,
        }
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Run `starling user ...` against this node's data dir.
    pub fn user_cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .arg("user")
            .args(args)
            .env_clear()
            .env("STARLING_DATA_DIR", self.data_dir())
            .output()
            .expect("run starling user")
    }

    pub fn add_user(&self, user: &str, password: &str) {
        let out = self.user_cmd(&["add", user, "--password", password]);
        assert!(
            out.status.success(),
            "user add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGSTOP (`true`) or SIGCONT: the process pauses, sockets stay open.
    pub fn pause(&self, stop: bool) {
        let sig = if stop { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} failed");
        if stop {
            // SIGSTOP takes effect when each thread is next scheduled: on a
            // busy machine the node may still answer a raft message or two
            // after kill returns. Wait (bounded) until every thread is
            // stopped, so what the test does next meets a paused node.
            let tasks = format!("/proc/{}/task", self.pid());
            let stopped = || {
                std::fs::read_dir(&tasks).is_ok_and(|d| {
                    d.flatten().all(|t| {
                        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                            st.rsplit_once(") ")
                                .is_some_and(|(_, rest)| rest.starts_with('T'))
                        })
                    })
                })
            };
            for _ in 0..200 {
                if stopped() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("node {} did not stop within 2 s of SIGSTOP", self.pid());
        }
    }

    /// SIGKILL: the node dies without any cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run `starling cluster ...` from this node's machine (its data dir),
    /// with `secret` as the cluster secret when given.
    pub fn cluster_cmd(&self, args: &[&str], secret: Option<&str>) -> std::process::Output {
        let mut cmd = Command::new(bin());
        cmd.arg("cluster")
            .args(args)
            .env_clear()
            .env("STARLING_DATA_DIR", self.data_dir())
            .envs(mesh_tls_env(None));
        if let Some(secret) = secret {
            cmd.env("STARLING_CLUSTER_SECRET", secret);
        }
        cmd.output().expect("run starling cluster")
    }

    /// `starling cluster status` against this node's mesh address.
    pub fn cluster_status(&self, secret: &str) -> String {
        let out = self.cluster_cmd(&["status", "--node", &self.mesh.to_string()], Some(secret));
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(10))
    }

    /// SIGTERM, then wait at most `limit` for the exit status.
    pub fn terminate_within(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("server did not exit within {limit:?} of SIGTERM");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Whether the process has exited (it is then reaped).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A failing test keeps its servers' logs (the temp dir goes).
        if std::thread::panicking() || std::env::var_os("STARLING_TEST_KEEP_LOGS").is_some() {
            let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("failed-logs");
            let _ = std::fs::create_dir_all(&kept);
            let name = std::thread::current()
                .name()
                .unwrap_or("test")
                .replace("::", "-");
            let to = kept.join(format!("{name}-{}.log", self.c2s).replace(':', "-"));
            if std::fs::copy(&self.stderr_log, &to).is_ok() {
                eprintln!("server log kept: {}", to.display());
            }
        }
    }
}

/// Accepts any certificate (the server under test makes a self-signed
/// one): the same verifier as `[s2s] verify_certificates = false`.
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    starling::transport::s2s::stream::client_tls(false)
}

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

/// What a read produced.
#[derive(Debug)]
pub enum Got {
    Element(Element),
    Header,
    End,
    Closed,
}

pub struct Client {
    reader: XmlStream<BufReader<ReadHalf<Conn>>>,
    writer: WriteHalf<Conn>,
    pub jid: Option<String>,
    pending: std::collections::VecDeque<Element>,
    next_id: u32,
    /// tls-exporter channel binding (RFC 9266), when on TLS 1.3.
    pub exporter: Option<Vec<u8>>,
    /// The server's certificate (DER), when on TLS.
    pub peer_cert: Option<Vec<u8>>,
}

impl Client {
    fn from_conn(conn: Conn) -> Client {
        let exporter = match &conn {
            Conn::Tls(t) => t
                .get_ref()
                .1
                .export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                .ok(),
            Conn::Plain(_) => None,
        };
        let peer_cert = match &conn {
            Conn::Tls(t) => t
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
            Conn::Plain(_) => None,
        };
        let (r, w) = tokio::io::split(conn);
        Client {
            reader: XmlStream::new(
                BufReader::new(r),
                XmlLimits {
                    max_stanza_bytes: 16 << 20,
                    ..XmlLimits::default()
                },
            ),
            writer: w,
            jid: None,
            pending: Default::default(),
            next_id: 1,
            exporter,
            peer_cert,
        }
    }

    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timeout")
            .expect("connect");
        Client::from_conn(Conn::Plain(tcp))
    }

    /// Connect from a chosen loopback source address (127.0.0.x).
    pub async fn connect_from(addr: SocketAddr, src: IpAddr) -> Client {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(src, 0)).expect("bind source");
        let tcp = tokio::time::timeout(WAIT, sock.connect(addr))
            .await
            .expect("connect timeout")
            .expect("connect");
        Client::from_conn(Conn::Plain(tcp))
    }

    pub async fn connect_tls(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio::time::timeout(WAIT, tls_connector().connect(name, tcp))
            .await
            .expect("tls timeout")
            .expect("tls");
        Client::from_conn(Conn::Tls(Box::new(tls)))
    }

    pub async fn send(&mut self, data: &str) {
        self.writer.write_all(data.as_bytes()).await.expect("write");
        self.writer.flush().await.expect("flush");
    }

    /// Connect without panicking (for clients that retry).
    pub async fn connect_raw(addr: SocketAddr) -> Option<Client> {
        let tcp = TcpStream::connect(addr).await.ok()?;
        Some(Client::from_conn(Conn::Plain(tcp)))
    }

    /// The next element within 3 s, or None (no panics).
    pub async fn try_element(&mut self) -> Option<Element> {
        if let Some(el) = self.pending.pop_front() {
            return Some(el);
        }
        match tokio::time::timeout(Duration::from_secs(3), self.reader.next()).await {
            Ok(Ok(StreamEvent::Stanza(el))) => Some(el),
            _ => None,
        }
    }

    /// SCRAM-SHA-256 without panicking (for clients that retry).
    pub async fn try_auth(&mut self, user: &str, password: &str) -> bool {
        let client = ScramClient::new(ScramHash::Sha256, user, password, None);
        let auth = format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{}</auth>",
            b64(&client.first())
        );
        if !self.try_send(&auth).await {
            return false;
        }
        let Some(ch) = self.try_element().await.filter(|e| e.name == "challenge") else {
            return false;
        };
        let Some((fin, _)) = client.final_message(&unb64(&ch.text())) else {
            return false;
        };
        let resp = format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64(&fin)
        );
        if !self.try_send(&resp).await {
            return false;
        }
        if self
            .try_element()
            .await
            .is_some_and(|e| e.name == "success")
        {
            self.reader.restart();
            true
        } else {
            false
        }
    }

    /// STARTTLS without panicking.
    pub async fn try_starttls(mut self) -> Option<Client> {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let p = self.try_element().await?;
        if p.name != "proceed" {
            return None;
        }
        let r = self.reader.into_inner().into_inner();
        let Conn::Plain(tcp) = r.unsplit(self.writer) else {
            return None;
        };
        let name = rustls_pki_types::ServerName::try_from("localhost").ok()?;
        let tls = tokio::time::timeout(WAIT, tls_connector().connect(name, tcp))
            .await
            .ok()?
            .ok()?;
        Some(Client::from_conn(Conn::Tls(Box::new(tls))))
    }

    /// Separate the read side (for a reader task) from the write side;
    /// elements already read ahead come along.
    /// What was read ahead and not yet taken, leaving none.
    pub fn take_pending(&mut self) -> Vec<Element> {
        self.pending.drain(..).collect()
    }

    pub fn split_reader(
        self,
    ) -> (
        XmlStream<BufReader<ReadHalf<Conn>>>,
        ClientWriter,
        Vec<Element>,
    ) {
        (
            self.reader,
            ClientWriter {
                writer: self.writer,
            },
            self.pending.into_iter().collect(),
        )
    }

    /// Raw bytes (e.g. a PROXY protocol header).
    pub async fn send_raw(&mut self, data: &[u8]) {
        self.writer.write_all(data).await.expect("write");
        self.writer.flush().await.expect("flush");
    }

    /// Send, tolerating a peer that already closed.
    pub async fn try_send(&mut self, data: &str) -> bool {
        self.writer.write_all(data.as_bytes()).await.is_ok() && self.writer.flush().await.is_ok()
    }

    pub async fn read(&mut self) -> Got {
        loop {
            let ev = tokio::time::timeout(WAIT, self.reader.next())
                .await
                .expect("timed out waiting for the server");
            return match ev {
                Ok(StreamEvent::Header(_)) => Got::Header,
                Ok(StreamEvent::Stanza(el)) => Got::Element(el),
                Ok(StreamEvent::Keepalive) => continue,
                Ok(StreamEvent::End) => Got::End,
                Err(_) => Got::Closed,
            };
        }
    }

    /// The next element (pending first); panics on anything else.
    pub async fn element(&mut self) -> Element {
        if let Some(el) = self.pending.pop_front() {
            return el;
        }
        match self.read().await {
            Got::Element(el) => el,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// Open a stream and return the features.
    pub async fn open(&mut self) -> Element {
        self.open_to("localhost").await
    }

    /// Open a stream to `domain` and return the features.
    pub async fn open_to(&mut self, domain: &str) -> Element {
        self.send(&HEADER.replace("to='localhost'", &format!("to='{domain}'")))
            .await;
        match self.read().await {
            Got::Header => {}
            other => panic!("expected a stream header, got {other:?}"),
        }
        let f = self.element().await;
        assert_eq!(f.name, "features", "{f:?}");
        f
    }

    /// Read until a stream error; returns its condition. Also checks the
    /// stream is then closed.
    pub async fn stream_error(&mut self) -> String {
        loop {
            match self.read().await {
                Got::Header => continue,
                Got::Element(el)
                    if el.name == "error" && el.ns == "http://etherx.jabber.org/streams" =>
                {
                    let cond = el
                        .elements()
                        .find(|c| c.name != "text")
                        .map(|c| c.name.clone())
                        .expect("condition element");
                    let after = self.read().await;
                    assert!(
                        matches!(after, Got::End | Got::Closed),
                        "stream not closed after error: {after:?}"
                    );
                    return cond;
                }
                Got::Element(_) => continue,
                other => panic!("expected a stream error, got {other:?}"),
            }
        }
    }

    /// STARTTLS: returns the client on the TLS stream (stream not yet reopened).
    pub async fn starttls(mut self) -> Client {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let p = self.element().await;
        assert_eq!(p.name, "proceed", "{p:?}");
        self.upgrade().await
    }

    /// Swap to TLS; any bytes read ahead are dropped.
    pub async fn upgrade(self) -> Client {
        let r = self.reader.into_inner().into_inner();
        let Conn::Plain(tcp) = r.unsplit(self.writer) else {
            panic!("already TLS")
        };
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio::time::timeout(WAIT, tls_connector().connect(name, tcp))
            .await
            .expect("tls timeout")
            .expect("tls handshake");
        Client::from_conn(Conn::Tls(Box::new(tls)))
    }

    /// SASL with a SCRAM mechanism; Ok on success, Err(condition) on failure.
    pub async fn auth_scram(
        &mut self,
        mech: &str,
        user: &str,
        password: &str,
    ) -> Result<(), String> {
        let hash = if mech.starts_with("SCRAM-SHA-256") {
            ScramHash::Sha256
        } else {
            ScramHash::Sha1
        };
        let cb = if mech.ends_with("-PLUS") {
            Some(self.exporter.clone().expect("TLS for -PLUS"))
        } else {
            None
        };
        let client = ScramClient::new(hash, user, password, cb);
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
            b64(&client.first())
        ))
        .await;
        let ch = self.element().await;
        if ch.name == "failure" {
            return Err(condition(&ch));
        }
        assert_eq!(ch.name, "challenge", "{ch:?}");
        let server_first = unb64(&ch.text());
        let (fin, expected) = client
            .final_message(&server_first)
            .expect("server-first parses");
        self.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64(&fin)
        ))
        .await;
        let res = self.element().await;
        match res.name.as_str() {
            "success" => {
                assert_eq!(unb64(&res.text()), expected, "server signature must verify");
                self.reader.restart();
                Ok(())
            }
            "failure" => Err(condition(&res)),
            _ => panic!("unexpected {res:?}"),
        }
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), String> {
        let msg = format!("\0{user}\0{password}");
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            b64(msg.as_bytes())
        ))
        .await;
        let res = self.element().await;
        match res.name.as_str() {
            "success" => {
                self.reader.restart();
                Ok(())
            }
            "failure" => Err(condition(&res)),
            _ => panic!("unexpected {res:?}"),
        }
    }

    /// SASL ANONYMOUS (RFC 4505) with `initial` as the element's text
    /// (empty: no initial response).
    #[allow(dead_code)]
    pub async fn auth_anonymous(&mut self, initial: &str) -> Result<(), String> {
        self.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'>{initial}</auth>"
        ))
        .await;
        let res = self.element().await;
        match res.name.as_str() {
            "success" => {
                self.reader.restart();
                Ok(())
            }
            "failure" => Err(condition(&res)),
            _ => panic!("unexpected {res:?}"),
        }
    }

    /// Bind; Ok(full JID) or Err(error condition).
    pub async fn bind(&mut self, resource: Option<&str>) -> Result<String, String> {
        let res = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send(&format!("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>{res}</bind></iq>")).await;
        let iq = self.element().await;
        assert_eq!(iq.attr("id"), Some("bind1"), "{iq:?}");
        if iq.attr("type") == Some("result") {
            let jid = iq
                .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
                .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
                .map(|j| j.text())
                .expect("bound jid");
            self.jid = Some(jid.clone());
            Ok(jid)
        } else {
            Err(stanza_condition(&iq).unwrap_or_default())
        }
    }

    /// Full login over STARTTLS with SCRAM-SHA-256, bound to `resource`.
    pub async fn login(addr: SocketAddr, user: &str, password: &str, resource: &str) -> Client {
        Client::login_at(addr, "localhost", user, password, resource).await
    }

    /// [`Client::login`] to a server whose domain is `domain`.
    pub async fn login_at(
        addr: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Client {
        let mut c = Client::connect(addr).await;
        c.open_to(domain).await;
        let mut c = c.starttls().await;
        c.open_to(domain).await;
        c.auth_scram("SCRAM-SHA-256", user, password)
            .await
            .expect("login");
        let f = c.open_to(domain).await;
        assert!(f
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .is_some());
        c.bind(Some(resource)).await.expect("bind");
        c
    }

    /// Log in and send initial presence (and eat its echo).
    pub async fn online(addr: SocketAddr, user: &str, password: &str, resource: &str) -> Client {
        let mut c = Client::login(addr, user, password, resource).await;
        c.send("<presence/>").await;
        let echo = c.stanza("presence").await;
        assert_eq!(echo.attr("from"), c.jid.as_deref());
        c
    }

    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("t{}", self.next_id)
    }

    /// Send an iq (its id is set here) and wait for the answer to it.
    pub async fn iq(&mut self, mut iq: Element) -> Element {
        let id = self.new_id();
        iq.set_attr("id", id.clone());
        self.send(&iq.to_xml("jabber:client")).await;
        self.wait_for(|e| e.name == "iq" && e.attr("id") == Some(id.as_str()))
            .await
    }

    /// The next stanza matching `pred`; others stay queued for later reads.
    pub async fn wait_for(&mut self, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("index");
        }
        loop {
            match self.read().await {
                Got::Element(el) if pred(&el) => return el,
                Got::Element(el) => self.pending.push_back(el),
                other => panic!("stream ended while waiting: {other:?}"),
            }
        }
    }

    pub async fn stanza(&mut self, name: &str) -> Element {
        self.wait_for(|e| e.name == name).await
    }

    /// Everything that arrives within `d` (after what was read ahead).
    pub async fn collect_for(&mut self, d: Duration) -> Vec<Element> {
        let mut out: Vec<Element> = self.pending.drain(..).collect();
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(ev) = tokio::time::timeout_at(deadline, self.reader.next()).await {
            match ev {
                Ok(StreamEvent::Stanza(el)) => out.push(el),
                Ok(StreamEvent::Keepalive) => continue,
                _ => break,
            }
        }
        out
    }

    /// Forget stanzas read ahead and not asked for.
    pub fn drain(&mut self) {
        self.pending.clear();
    }

    /// True if nothing arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        match tokio::time::timeout(d, self.reader.next()).await {
            Err(_) => true,
            Ok(Ok(StreamEvent::Keepalive)) => true,
            Ok(other) => {
                if let Ok(StreamEvent::Stanza(el)) = other {
                    self.pending.push_back(el);
                }
                false
            }
        }
    }
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("base64")
}

/// The condition inside a SASL failure.
pub fn condition(el: &Element) -> String {
    el.elements()
        .find(|c| c.name != "text")
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// The defined condition of a stanza error.
pub fn stanza_condition(stanza: &Element) -> Option<String> {
    let err = stanza.get_child("error", "jabber:client")?;
    err.elements()
        .find(|c| c.ns == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name != "text")
        .map(|c| c.name.clone())
}

pub fn iq_get(to: Option<&str>, payload: Element) -> Element {
    let mut iq = Element::new("iq", "jabber:client")
        .with_attr("type", "get")
        .with_child(payload);
    if let Some(t) = to {
        iq.set_attr("to", t);
    }
    iq
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let (code, _, body) = http_exchange(addr, req.as_bytes(), WAIT).await;
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// One raw HTTP exchange on a new connection: `request` (head and body)
/// sent as given, the answer read to its end within `wait`: its status,
/// its head (without the blank line) and its body.
pub async fn http_exchange(
    addr: SocketAddr,
    request: &[u8],
    wait: Duration,
) -> (u16, String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::time::timeout(wait, TcpStream::connect(addr))
        .await
        .expect("http connect timeout")
        .expect("http connect");
    s.write_all(request).await.expect("http write");
    let mut buf = Vec::new();
    tokio::time::timeout(wait, s.read_to_end(&mut buf))
        .await
        .expect("http read timeout")
        .expect("http read");
    let (head, body) = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&buf[..at], buf[at + 4..].to_vec()),
        None => (&buf[..], Vec::new()),
    };
    let head = String::from_utf8_lossy(head).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head, body)
}

/// The write side of a split client.
pub struct ClientWriter {
    writer: WriteHalf<Conn>,
}

impl ClientWriter {
    pub async fn try_send(&mut self, data: &str) -> bool {
        self.writer.write_all(data.as_bytes()).await.is_ok() && self.writer.flush().await.is_ok()
    }
}

/// A cluster node process: node `id`, joining `join`'s mesh (None
/// bootstraps), sharing `secret`, with extra settings.
pub fn cluster_node(
    id: u64,
    join: Option<&Server>,
    secret: &str,
    extra: &[(&str, &str)],
) -> Server {
    let tls = mesh_tls_env(Some(id));
    let id = id.to_string();
    let join = join.map(|s| s.mesh.to_string()).unwrap_or_default();
    let mut env: Vec<(&str, &str)> = vec![
        ("STARLING_CLUSTER_NODE_ID", &id),
        ("STARLING_CLUSTER_SECRET", secret),
        ("STARLING_CLUSTER_JOIN", &join),
    ];
    env.extend(tls.iter().map(|(k, v)| (*k, v.as_str())));
    env.extend_from_slice(extra);
    Server::start_with(&env)
}

/// Authenticated (not yet bound) on `s`, retrying while the account
/// replicates to that node.
pub async fn authed_retry(s: &Server, user: &str, password: &str) -> Client {
    for _ in 0..50 {
        let mut c = Client::connect(s.c2s).await;
        c.open().await;
        let mut c = c.starttls().await;
        c.open().await;
        if c.auth_scram("SCRAM-SHA-256", user, password).await.is_ok() {
            c.open().await;
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{user} cannot authenticate");
}

/// Authenticated on `s` (retrying while the account replicates), bound
/// to `resource`, with stream management (XEP-0198) enabled.
pub async fn sm_bound(s: &Server, user: &str, password: &str, resource: &str) -> Client {
    let mut c = authed_retry(s, user, password).await;
    c.bind(Some(resource)).await.expect("bind");
    c.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    c.wait_for(|e| e.name == "enabled").await;
    c
}

/// The largest `h` in the stream management `<a/>`s among `stanzas`.
pub fn acked_h(stanzas: &[Element]) -> Option<u32> {
    stanzas
        .iter()
        .filter(|e| e.name == "a" && e.ns == "urn:xmpp:sm:3")
        .filter_map(|e| e.attr("h")?.parse().ok())
        .max()
}

/// Ask for acknowledgements (`<r/>`) until the server's `h` reaches `n`
/// or `limit` passes; the largest `h` seen, counting `seen` (what an
/// earlier read already showed).
pub async fn acked_up_to(
    c: &mut Client,
    n: u32,
    seen: Option<u32>,
    limit: Duration,
) -> Option<u32> {
    let deadline = std::time::Instant::now() + limit;
    let mut acked = seen;
    while acked != Some(n) && std::time::Instant::now() < deadline {
        c.send("<r xmlns='urn:xmpp:sm:3'/>").await;
        acked = acked_h(&c.collect_for(Duration::from_millis(500)).await).max(acked);
    }
    acked
}

/// Wait (bounded) until `s` reports at least `n` cluster members.
pub async fn wait_members(s: &Server, secret: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while s.cluster_status(secret).matches("127.0.0.").count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster never reached {n} members"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Python with slixmpp: `.venv` (made by `.ci/run` from
/// tests/interop/requirements.txt), or STARLING_PYTHON.
#[allow(dead_code)]
pub fn python() -> String {
    if let Ok(p) = std::env::var("STARLING_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    assert!(
        std::path::Path::new(venv).exists(),
        "no Python venv with slixmpp at {venv}: run `bash .ci/run` (or python3 -m venv .venv && .venv/bin/pip install -r tests/interop/requirements.txt)"
    );
    venv.to_string()
}

/// Run tests/interop/slixmpp_federation.py: alice on Starling at
/// `starling`, bob (`bob_jid`, password bob-pw) on a remote server whose
/// c2s listens on 127.0.0.1:`remote_c2s`.
pub async fn federate(
    starling: SocketAddr,
    remote_c2s: u16,
    bob_jid: &'static str,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/slixmpp_federation.py"
            ))
            .args([starling.ip().to_string(), starling.port().to_string()])
            .args(["alice@starling.localhost/fed", "alice-pw", "127.0.0.1"])
            .arg(remote_c2s.to_string())
            .args([bob_jid, "bob-pw"])
            .output()
            .expect("run python")
    })
    .await
    .expect("federation script task")
}

/// The slixmpp echo gateway (tests/interop/slixmpp_component_echo.py)
/// connected to a component listener; stopped when dropped.
pub struct EchoComponent(Child);

impl EchoComponent {
    /// Start it for `domain` and wait until it says it is connected
    /// (`log` is shown if it does not).
    pub async fn start(
        addr: SocketAddr,
        domain: &str,
        secret: &str,
        log: impl Fn() -> String,
    ) -> EchoComponent {
        let mut child = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/slixmpp_component_echo.py"
            ))
            .args([addr.ip().to_string(), addr.port().to_string()])
            .args([domain, secret])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the echo component");
        let stdout = child.stdout.take().expect("component stdout");
        let first = tokio::task::spawn_blocking(move || StdBufReader::new(stdout).lines().next())
            .await
            .expect("read the component");
        let component = EchoComponent(child);
        assert_eq!(
            first.and_then(|l| l.ok()).as_deref(),
            Some("CONNECTED"),
            "the component did not connect: {}",
            log()
        );
        component
    }
}

impl Drop for EchoComponent {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub const MAM_NS: &str = "urn:xmpp:mam:2";

/// One XEP-0313 query of the client's own archive (`extra` goes inside
/// `<query/>`): the results' (id, body), and the iq that ended it.
pub async fn mam_query(
    c: &mut Client,
    queryid: &str,
    extra: &str,
) -> (Vec<(String, String)>, Element) {
    let q = format!("<query xmlns='{MAM_NS}' queryid='{queryid}'>{extra}</query>");
    let mut iq = Element::new("iq", "jabber:client").with_attr("type", "set");
    iq.push_child(starling::base::xml::parse_fragment(&q).expect("test xml"));
    let id = c.new_id();
    iq.set_attr("id", id.clone());
    c.send(&iq.to_xml("jabber:client")).await;
    let mut got = Vec::new();
    loop {
        let el = c
            .wait_for(|e| {
                e.attr("id") == Some(id.as_str())
                    || e.get_child("result", MAM_NS)
                        .is_some_and(|r| r.attr("queryid") == Some(queryid))
            })
            .await;
        if el.name == "iq" {
            return (got, el);
        }
        let r = el.get_child("result", MAM_NS).expect("result");
        let body = r
            .get_child("forwarded", "urn:xmpp:forward:0")
            .and_then(|f| f.get_child("message", "jabber:client"))
            .and_then(|m| m.get_child("body", "jabber:client"))
            .map(|b| b.text())
            .unwrap_or_default();
        got.push((r.attr("id").unwrap_or_default().to_string(), body));
    }
}

/// Loopback ports of a cluster whose nodes keep their addresses across
/// restarts: node i listens on 127.0.0.i at these ports.
pub struct FixedPorts {
    pub c2s: u16,
    pub http: u16,
    pub mesh: u16,
}

/// Node `i` of such a cluster on data dir `dir` (nodes after the first
/// join node 1), with `extra` settings.
pub fn fixed_node(
    i: u64,
    dir: tempfile::TempDir,
    secret: &str,
    ports: &FixedPorts,
    extra: &[(&str, &str)],
) -> Server {
    let ip = format!("127.0.0.{i}");
    let join = if i == 1 {
        String::new()
    } else {
        format!("127.0.0.1:{}", ports.mesh)
    };
    let tls = mesh_tls_env(Some(i));
    let (id, mesh) = (i.to_string(), format!("{ip}:{}", ports.mesh));
    let (c2s, http) = (
        format!("{ip}:{}", ports.c2s),
        format!("{ip}:{}", ports.http),
    );
    let mut env: Vec<(&str, &str)> = vec![
        ("STARLING_CLUSTER_NODE_ID", &id),
        ("STARLING_CLUSTER_SECRET", secret),
        ("STARLING_CLUSTER_JOIN", &join),
        ("STARLING_CLUSTER_LISTEN", &mesh),
        ("STARLING_C2S_LISTEN", &c2s),
        ("STARLING_HTTP_LISTEN", &http),
    ];
    env.extend(tls.iter().map(|(k, v)| (*k, v.as_str())));
    env.extend_from_slice(extra);
    Server::start_in(dir, &env)
}

/// Run the interop script `tests/interop/NAME` with `args` (at most
/// `limit`), and check that it exited cleanly and printed each of
/// `steps`; on failure, its output and the logs of `nodes` are shown.
#[allow(dead_code)]
pub fn run_interop(
    name: &str,
    args: &[String],
    nodes: &[&Server],
    limit: Duration,
    steps: &[&str],
) -> String {
    let script = format!("{}/tests/interop/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(python());
    cmd.arg(&script).args(args);
    run_client(cmd, name, nodes, limit, steps)
}

/// tests/web, where the JavaScript clients (npm) are installed.
#[allow(dead_code)]
pub fn web_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web");
    assert!(
        dir.join("node_modules").exists(),
        "no npm packages in {}: run `bash .ci/run` (or npm ci there)",
        dir.display()
    );
    dir
}

/// Run the Node script `tests/web/NAME` like [`run_interop`]. Certificates
/// are not checked (the nodes' are self-signed).
#[allow(dead_code)]
pub fn run_web(
    name: &str,
    args: &[String],
    nodes: &[&Server],
    limit: Duration,
    steps: &[&str],
) -> String {
    let dir = web_dir();
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(&dir)
        .arg(dir.join(name))
        .args(args)
        .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
        .env("NODE_NO_WARNINGS", "1");
    run_client(cmd, name, nodes, limit, steps)
}

/// Run a client program (bounded by `limit`) and check its steps.
#[allow(dead_code)]
fn run_client(
    mut cmd: std::process::Command,
    name: &str,
    nodes: &[&Server],
    limit: Duration,
    steps: &[&str],
) -> String {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    let mut waited = Duration::ZERO;
    while child.try_wait().expect("wait").is_none() {
        if waited > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let logs = || {
        nodes
            .iter()
            .map(|n| n.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}\nserver logs:\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    for step in steps {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    stdout
}

/// BOSH's namespace (XEP-0124).
#[allow(dead_code)]
pub const BOSH_NS: &str = "http://jabber.org/protocol/httpbind";

/// One HTTP/1.0 POST of `body` to /http-bind: status and response body.
#[allow(dead_code)]
pub async fn post(addr: SocketAddr, body: &str) -> (u16, String) {
    let (code, _, body) = post_with(addr, body, "").await;
    (code, body)
}

/// [`post`] with extra header lines (each ending in CRLF): status, head,
/// body. A new connection per request, as a load balancer may see them.
#[allow(dead_code)]
pub async fn post_with(addr: SocketAddr, body: &str, headers: &str) -> (u16, String, String) {
    let req = format!(
        "POST /http-bind HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml; charset=utf-8\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (code, head, body) = http_exchange(addr, req.as_bytes(), Duration::from_secs(70)).await;
    (code, head, String::from_utf8_lossy(&body).into_owned())
}

#[allow(dead_code)]
pub fn attr(xml: &str, name: &str) -> Option<String> {
    let at = xml.find(&format!(" {name}='"))? + name.len() + 3;
    Some(xml[at..].split('\'').next()?.to_string())
}

#[allow(dead_code)]
/// A BOSH client session, made by hand (tests/web_bosh.rs).
#[derive(Clone)]
pub struct Bosh {
    pub addr: SocketAddr,
    pub sid: String,
    pub rid: u64,
    /// Sent with every request (a load balancer's cookie).
    pub cookie: String,
}

#[allow(dead_code)]
impl Bosh {
    /// Create a session (wait and hold as given): the session and the
    /// creation response.
    /// A load balancer's cookie, if the answer set one, is sent from then on.
    pub async fn create(addr: SocketAddr, wait: u32, hold: u32) -> (Bosh, String) {
        let rid = 1000;
        let (code, head, r) = post_with(
            addr,
            &format!("<body rid='{rid}' to='localhost' wait='{wait}' hold='{hold}' ver='1.11' xml:lang='en' xmlns='{BOSH_NS}' xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>"),
            "",
        )
        .await;
        assert_eq!(code, 200, "{r}");
        let sid = attr(&r, "sid").unwrap_or_else(|| panic!("no sid in {r}"));
        let cookie = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("set-cookie").then(|| v.trim())
            })
            .and_then(|v| v.split(';').next())
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        (
            Bosh {
                addr,
                sid,
                rid,
                cookie,
            },
            r,
        )
    }

    /// The next request's body with `payload` (and extra attributes).
    pub fn next(&mut self, extra: &str, payload: &str) -> (u64, String) {
        self.rid += 1;
        let b = format!(
            "<body rid='{}' sid='{}' xmlns='{BOSH_NS}' xmlns:xmpp='urn:xmpp:xbosh'{extra}>{payload}</body>",
            self.rid, self.sid
        );
        (self.rid, b)
    }

    pub async fn send(&mut self, payload: &str) -> (u16, String) {
        let (_, b) = self.next("", payload);
        let (code, _, body) = post_with(self.addr, &b, &self.cookie).await;
        (code, body)
    }

    /// Create, SASL PLAIN, restart, bind: the session and its full JID.
    pub async fn login(addr: SocketAddr, user: &str, password: &str, wait: u32) -> (Bosh, String) {
        let (mut b, created) = Bosh::create(addr, wait, 1).await;
        assert!(
            created.contains("<mechanism>PLAIN</mechanism>"),
            "{created}"
        );
        assert_eq!(
            attr(&created, "requests").as_deref(),
            Some("2"),
            "{created}"
        );
        let plain = b64(format!("\0{user}\0{password}").as_bytes());
        let (_, r) = b
            .send(&format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
            ))
            .await;
        assert!(r.contains("<success"), "{r}");
        let (_, body) = b.next(" to='localhost' xmpp:restart='true'", "");
        let (_, _, r) = post_with(addr, &body, &b.cookie).await;
        assert!(
            r.contains("<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"),
            "{r}"
        );
        let (_, r) = b
            .send("<iq xmlns='jabber:client' type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>web</resource></bind></iq>")
            .await;
        assert!(
            r.contains(&format!("<jid>{user}@localhost/web</jid>")),
            "{r}"
        );
        (b, format!("{user}@localhost/web"))
    }
}
