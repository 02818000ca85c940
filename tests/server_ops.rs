//! Running a node: config errors, graceful shutdown, account management
//! (from the command line, and from a client with XEP-0133 commands).
mod common;
use common::*;
use std::process::Command;

fn serve_with(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_clear()
        .env("STARLING_DATA_DIR", dir.path().join("data"))
        .env("STARLING_C2S_LISTEN", "127.0.0.1:0")
        .env("STARLING_C2S_DIRECT_TLS_LISTEN", "127.0.0.1:0")
        .env("STARLING_CLUSTER_LISTEN", "127.0.0.1:0")
        .env("STARLING_HTTP_LISTEN", "127.0.0.1:0")
        .env("STARLING_S2S_LISTEN", "127.0.0.1:0")
        .env("STARLING_COMPONENT_LISTEN", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Bounded: a config error exits at once; never wait on a server that started.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("expected the command to exit");
}

fn one_line_error(out: &std::process::Output, needle: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} named in: {err}");
}

#[test]
fn config_errors_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "domain = 'x.example'\n[c2s]\nlisten = '127.0.0.1:0'\nlisen = 'oops'\n",
    )
    .unwrap();
    one_line_error(
        &serve_with(&[], &["serve", "--config", f.to_str().unwrap()]),
        "lisen",
    );
    std::fs::write(&f, "[limits]\nmax_stanza_size = 'big'\n").unwrap();
    one_line_error(
        &serve_with(&[], &["serve", "--config", f.to_str().unwrap()]),
        "max_stanza_size",
    );
    one_line_error(
        &serve_with(&[("STARLING_C2S_LISTEN", "not-an-address")], &["serve"]),
        "c2s.listen",
    );
    one_line_error(
        &serve_with(&[("STARLING_LIMITS_AUTH_TIMEOUT_SECS", "soon")], &["serve"]),
        "STARLING_LIMITS_AUTH_TIMEOUT_SECS",
    );
    one_line_error(
        &serve_with(&[("STARLING_NO_SUCH_THING", "1")], &["serve"]),
        "no_such_thing",
    );
    one_line_error(
        &serve_with(&[], &["serve", "--config", "/nonexistent/starling.toml"]),
        "/nonexistent/starling.toml",
    );
    // Mesh certificates: a missing file is named; another node's
    // certificate is refused at start.
    let certs = dir.path().join("certs");
    let made = Command::new(bin())
        .args(["cluster", "certs", "--nodes", "1,2", "--dir"])
        .arg(&certs)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let file = |f: &str| certs.join(f).display().to_string();
    let (ca, cert2, key2) = (file("ca.pem"), file("node-2.pem"), file("node-2-key.pem"));
    one_line_error(
        &serve_with(
            &[
                ("STARLING_CLUSTER_TLS_CA", "/nonexistent/ca.pem"),
                ("STARLING_CLUSTER_TLS_CERT", &cert2),
                ("STARLING_CLUSTER_TLS_KEY", &key2),
            ],
            &["serve"],
        ),
        "/nonexistent/ca.pem",
    );
    one_line_error(
        &serve_with(
            &[
                ("STARLING_CLUSTER_TLS_CA", &ca),
                ("STARLING_CLUSTER_TLS_CERT", &cert2),
                ("STARLING_CLUSTER_TLS_KEY", &key2),
            ],
            &["serve"],
        ),
        "does not name node-1.starling-mesh",
    );
    one_line_error(
        &serve_with(&[("STARLING_CLUSTER_TLS_CERT", &cert2)], &["serve"]),
        "set all three or none",
    );
    // A port in use names the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    one_line_error(
        &serve_with(&[("STARLING_C2S_LISTEN", &addr)], &["serve"]),
        &addr,
    );
}

#[tokio::test]
async fn sigterm_sends_system_shutdown_and_exits_0() {
    let mut s = Server::start();
    s.add_user("alice", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    // One more connection still negotiating.
    let mut pending = Client::connect(s.c2s).await;
    pending.open().await;
    let status = tokio::task::spawn_blocking(move || {
        let st = s.terminate();
        (st, s)
    });
    assert_eq!(a.stream_error().await, "system-shutdown");
    assert_eq!(pending.stream_error().await, "system-shutdown");
    let (status, s) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}; log: {}", s.log());
}

#[tokio::test]
async fn user_commands_offline_and_against_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let user = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.arg("user")
            .args(args)
            .env_clear()
            .env("STARLING_DATA_DIR", &data);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    };
    // Offline, directly on the data dir; password from stdin.
    assert!(user(&["add", "alice"], Some("from-stdin\n"))
        .status
        .success());
    let added = user(&["add", "bob", "-p", "pw"], None);
    assert!(added.status.success());
    // Issue 13: a success says so.
    assert_eq!(
        String::from_utf8_lossy(&added.stdout),
        "added bob@localhost\n"
    );
    let dup = user(&["add", "bob", "-p", "pw"], None);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let bad = user(&["add", "a@b", "-p", "pw"], None);
    assert!(!bad.status.success());
    assert_eq!(
        String::from_utf8_lossy(&user(&["list"], None).stdout),
        "alice\nbob\n"
    );

    // Now with the node running on the same data dir: through the admin socket.
    let s = Server::start_in(dir, &[]);
    let data = s.data_dir();
    let user = |args: &[&str]| {
        Command::new(bin())
            .arg("user")
            .args(args)
            .env_clear()
            .env("STARLING_DATA_DIR", &data)
            .output()
            .unwrap()
    };
    Client::login(s.c2s, "alice", "from-stdin", "r").await;
    assert!(user(&["passwd", "alice", "-p", "changed"]).status.success());
    assert!(user(&["add", "carol", "-p", "pw3"]).status.success());
    let mut carol = Client::online(s.c2s, "carol", "pw3", "r").await;
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    assert_eq!(
        c.auth_scram("SCRAM-SHA-256", "alice", "from-stdin").await,
        Err("not-authorized".into())
    );
    c.auth_scram("SCRAM-SHA-256", "alice", "changed")
        .await
        .expect("new password");
    // Deleting an account ends its sessions.
    assert!(user(&["del", "carol"]).status.success());
    assert_eq!(carol.stream_error().await, "not-authorized");
    assert_eq!(
        String::from_utf8_lossy(&user(&["list"]).stdout),
        "alice\nbob\n"
    );
    let missing = user(&["del", "nobody"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no account"));
}

/// Issue 13: the self-signed certificate made on first start names the
/// domain (it said "rcgen self signed cert" in clients' trust prompts).
#[tokio::test]
async fn the_self_signed_certificate_names_the_domain() {
    let s = Server::start();
    let cert = s.data_dir().join("tls/cert.pem");
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
        ])
        .arg(&cert)
        .output()
        .expect("openssl (installed by .ci/run)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("CN = localhost"), "{text}");
    assert!(text.contains("DNS:localhost"), "{text}");
}

/// Issue 13: `cluster status` from a machine without the secret made a new
/// data_dir/cluster.secret and then said "bad cluster secret". A read-only
/// command never writes, and says how to pass the secret.
#[tokio::test]
async fn cluster_status_without_the_secret_writes_nothing_and_says_how() {
    let s = Server::start();
    let elsewhere = tempfile::tempdir().unwrap();
    let data = elsewhere.path().join("data");
    let out = Command::new(bin())
        .args(["cluster", "status", "--node", &s.mesh.to_string()])
        .env_clear()
        .env("STARLING_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("STARLING_CLUSTER_SECRET"), "{err}");
    assert!(!data.join("cluster.secret").exists(), "wrote a secret");
    // With the node's own secret it answers.
    let secret = std::fs::read_to_string(s.data_dir().join("cluster.secret")).unwrap();
    let out = Command::new(bin())
        .args(["cluster", "status", "--node", &s.mesh.to_string()])
        .env_clear()
        .env("STARLING_DATA_DIR", &data)
        .env("STARLING_CLUSTER_SECRET", secret.trim())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("leader"));
}

/// `[log] level = "info,stanza=trace"` logs every stanza in and out, in
/// the session's span (its JID); plain "debug" keeps library internals
/// (HTTP/2 frames, sled) out.
#[tokio::test]
async fn stanza_trace_logging_names_the_session() {
    let s = Server::start_with(&[("STARLING_LOG_LEVEL", "info,stanza=trace")]);
    s.add_user("alice", "pw");
    let mut a = Client::online(s.c2s, "alice", "pw", "desk").await;
    a.send(
        "<message to='alice@localhost/desk' type='chat' id='traced-1'><body>hi</body></message>",
    )
    .await;
    a.wait_for(|e| e.attr("id") == Some("traced-1")).await;
    let log = s.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("traced-1")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("jid=alice@localhost/desk") && l.contains(" in=")),
        "inbound stanza logged in the session's span: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("jid=alice@localhost/desk") && l.contains(" out=")),
        "outbound stanza logged in the session's span: {lines:#?}"
    );

    let quiet = Server::start_with(&[("STARLING_LOG_LEVEL", "debug")]);
    quiet.add_user("bob", "pw");
    let _b = Client::online(quiet.c2s, "bob", "pw", "r").await;
    let log = quiet.log();
    assert!(log.contains("DEBUG"), "debug lines of Starling itself");
    assert!(
        !log.contains("h2::") && !log.contains("sled::") && !log.contains("rustls::"),
        "no library internals at plain debug"
    );
}

/// Server administration from a client (XEP-0050, XEP-0133).
#[test]
fn admin_commands_from_a_client() {
    let s = Server::start_with(&[("STARLING_ADMINS", "root@localhost")]);
    s.add_user("root", "root-pw");
    s.add_user("alice", "alice-pw");
    run_interop(
        "slixmpp_admin_commands.py",
        &[
            DOMAIN.into(),
            s.c2s.to_string(),
            "root".into(),
            "root-pw".into(),
            "alice".into(),
            "alice-pw".into(),
        ],
        &[&s],
        std::time::Duration::from_secs(180),
        &[
            "OK commands listed for admins only",
            "OK add user",
            "OK online users",
            "OK announce",
            "OK change password",
            "OK delete user",
            "ALL OK",
        ],
    );
}
