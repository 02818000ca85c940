//! The docker-compose topology without Docker: `starling cluster up
//! --nodes 3` (127.0.0.1..3) behind Debian's haproxy, configured from the
//! same tests/deploy/haproxy.cfg the compose file uses. Clients connect to
//! HAProxy only and still reach each other across nodes.
mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Ports are the defaults plus this offset (fixed, below 32768).
const OFFSET: u16 = 3000;
const FRONT: &str = "127.0.0.1:8300";
/// HAProxy's HTTP front (WebSocket and BOSH).
const WEB_FRONT: &str = "127.0.0.1:8301";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        // cluster up drains its nodes on SIGTERM; haproxy just stops.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_haproxy() {
    assert!(
        Command::new("haproxy").arg("-v").output().is_ok(),
        "haproxy is not installed: run `bash .ci/run` (apt-get install haproxy)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut up = Command::new(bin())
        .args([
            "cluster",
            "up",
            "--nodes",
            "3",
            "--port-offset",
            &OFFSET.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STARLING_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starling cluster up");
    let out = up.stdout.take().unwrap();
    // The nodes' log lines, each marked with its node.
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let err = up.stderr.take().unwrap();
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    let _up = Kill(up);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("cluster up:") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(90))
        .expect("cluster up did not start its nodes");
    // Each node made its certificate on first start and said so (warn).
    for i in 1..=3 {
        let prefix = format!("node {i} | ");
        let said = logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with(&prefix) && l.contains("self-signed"));
        assert!(
            said,
            "no log line marked {prefix:?}: {:?}",
            logs.lock().unwrap()
        );
    }

    // Accounts through node 1's admin socket.
    for (u, p) in [("alice", "pw"), ("bob", "pw")] {
        let out = Command::new(bin())
            .args(["user", "add", u, "-p", p])
            .env_clear()
            .env("STARLING_DATA_DIR", dir.path().join("node1"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The mesh is mutual TLS: the cluster commands get in with the
    // admin.toml cluster up wrote (secret and admin certificate), and not
    // with the secret alone over a plain connection.
    let mesh = format!("127.0.0.1:{}", 7222 + OFFSET);
    let status = |with_tls: bool| {
        let mut c = Command::new(bin());
        c.env_clear();
        if with_tls {
            c.arg("--config").arg(dir.path().join("admin.toml"));
        } else {
            let secret = std::fs::read_to_string(dir.path().join("cluster.secret")).unwrap();
            c.env("STARLING_CLUSTER_SECRET", secret.trim());
        }
        c.args(["cluster", "status", "--node", &mesh])
            .output()
            .unwrap()
    };
    let out = status(true);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success()
            && (1..=3).all(|i| said.contains(&format!("127.0.0.{i}:{}", 7222 + OFFSET))),
        "status over mutual TLS: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = status(false);
    assert!(
        !plain.status.success(),
        "a plain connection with the secret was answered: {}",
        String::from_utf8_lossy(&plain.stdout)
    );

    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deploy/haproxy.cfg");
    let web = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/deploy/haproxy-web.cfg");
    let haproxy = Command::new("haproxy")
        .args(["-f", cfg, "-f", web, "-db"])
        .env("BIND", FRONT)
        .env("HTTP_BIND", WEB_FRONT)
        .env("NODE1", "127.0.0.1")
        .env("NODE2", "127.0.0.2")
        .env("NODE3", "127.0.0.3")
        .env("C2S_PORT", (5222 + OFFSET).to_string())
        .env("HTTP_PORT", (5280 + OFFSET).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let _haproxy = Kill(haproxy);

    // Wait until HAProxy accepts and a node answers through it.
    let front: std::net::SocketAddr = FRONT.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(front).await.is_ok() {
            let mut c = Client::connect(front).await;
            c.send(HEADER).await;
            if matches!(
                tokio::time::timeout(Duration::from_secs(2), c.read()).await,
                Ok(Got::Header)
            ) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "haproxy never passed a client to a node"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Round robin spreads these logins over the nodes.
    let mut a = Client::online(front, "alice", "pw", "a").await;
    let mut b = Client::online(front, "bob", "pw", "b").await;
    let mut extra = Client::online(front, "alice", "pw", "c").await;
    a.send(
        "<message to='bob@localhost/b' type='chat' id='h1'><body>through haproxy</body></message>",
    )
    .await;
    assert_eq!(
        b.wait_for(|e| e.name == "message").await.attr("id"),
        Some("h1")
    );
    b.send("<message to='alice@localhost/c' type='chat' id='h2'><body>back</body></message>")
        .await;
    assert_eq!(
        extra.wait_for(|e| e.name == "message").await.attr("id"),
        Some("h2")
    );
    // A BOSH client through HAProxy: each request on a new connection,
    // all pinned to the session's node by HAProxy's cookie.
    let web: std::net::SocketAddr = WEB_FRONT.parse().unwrap();
    let (mut w, jid) = Bosh::login(web, "bob", "pw", 5).await;
    assert!(w.cookie.contains("STARLING_NODE=node"), "{:?}", w.cookie);
    w.send("<presence xmlns='jabber:client'/>").await;
    let (_, held) = w.next("", "");
    let cookie = w.cookie.clone();
    let waiting = tokio::spawn(async move { post_with(web, &held, &cookie).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.send(&format!(
        "<message to='{jid}' type='chat' id='h3'><body>to the web</body></message>"
    ))
    .await;
    let (code, _, r) = waiting.await.unwrap();
    assert_eq!(code, 200);
    assert!(r.contains("id='h3'"), "{r}");
    let (_, _) = w
        .send("<message xmlns='jabber:client' to='alice@localhost/a' type='chat' id='h4'><body>from the web</body></message>")
        .await;
    assert_eq!(
        a.wait_for(|e| e.name == "message").await.attr("id"),
        Some("h4")
    );
    // The nodes' health checks say ready.
    for i in 1..=3 {
        let addr: std::net::SocketAddr = format!("127.0.0.{i}:{}", 5280 + OFFSET).parse().unwrap();
        assert_eq!(http_get(addr, "/health/ready").await.0, 200, "node {i}");
    }
}
