//! The gateway example, with software people run: biboumi (Debian's
//! XMPP-to-IRC gateway) attached as an XEP-0114 component to a three-node
//! cluster through HAProxy (tests/deploy/haproxy-gateway.cfg, which lists
//! node 3 first), bridging to an ngircd IRC server on loopback. The XMPP
//! and IRC sides are driven by tests/interop/slixmpp_biboumi.py (slixmpp
//! and a raw IRC socket):
//!
//! - a user on node 1 enters `#test%127.0.0.47@biboumi.localhost` while
//!   biboumi is on node 3; messages, an IRC nick change and part; a user on
//!   node 2 enters too; private messages to an IRC nick from both, and
//!   biboumi's ad-hoc commands listed from nodes 1 and 2;
//! - a Prosody user reaches the same channel through federation, the
//!   gateway's stanzas leaving on a link that authenticates as
//!   `biboumi.localhost`;
//! - biboumi killed: a readable error for entering, a group message and a
//!   private message, here and for the Prosody user; started again: it
//!   works;
//! - node 3 drained while biboumi is paused: a readable error; biboumi
//!   resumes, reconnects through HAProxy to node 2, and it works again.
mod common;
use common::prosody::Prosody;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "gateway-test-secret-0123456789";
const GW: &str = "biboumi.localhost";
const GW_SECRET: &str = "biboumi-gateway-secret";
/// ngircd, at an address of its own (fixed port below 32768).
const IRC_HOST: &str = "127.0.0.47";
const IRC: &str = "127.0.0.47:6667";
/// HAProxy's front for gateways.
const GW_FRONT: &str = "127.0.0.48:5347";
const PROSODY_C2S: u16 = 16722;
const PROSODY_S2S: u16 = 16769;

/// A child process stopped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(cmd: &str, arg: &str) {
    assert!(
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        "{cmd} is not installed: run `bash .ci/run` (apt-get install biboumi ngircd haproxy prosody)"
    );
}

fn node(id: u64, join: Option<&Server>) -> Server {
    let route = format!("prosody.localhost=127.0.0.1:{PROSODY_S2S}");
    let secrets = format!("{GW}={GW_SECRET}");
    cluster_node(
        id,
        join,
        SECRET,
        &[
            ("STARLING_DOMAIN", "starling.localhost"),
            ("STARLING_S2S_VERIFY_CERTIFICATES", "false"),
            ("STARLING_S2S_STATIC_ROUTES", &route),
            ("STARLING_COMPONENT_SECRETS", &secrets),
            ("STARLING_LOG_LEVEL", "info,starling::transport::s2s=debug"),
        ],
    )
}

fn start_ngircd(dir: &Path) -> Proc {
    let conf = dir.join("ngircd.conf");
    std::fs::write(
        &conf,
        format!(
            "[Global]\nName = irc.test\nInfo = Starling gateway test\nListen = {IRC_HOST}\n\
             Ports = 6667\nPidFile = {}\nMotdPhrase = test\n\
             [Limits]\nMaxConnectionsIP = 0\n\
             [Options]\nPAM = no\nIdent = no\nDNS = no\n",
            dir.join("ngircd.pid").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("ngircd.log")).unwrap();
    let child = Command::new("ngircd")
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start ngircd");
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(IRC).is_err() {
        assert!(
            Instant::now() < deadline,
            "ngircd did not start: {}",
            std::fs::read_to_string(dir.join("ngircd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

fn start_haproxy(nodes: [&Server; 3]) -> Proc {
    let cfg = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/deploy/haproxy-gateway.cfg"
    );
    let mut cmd = Command::new("haproxy");
    cmd.args(["-f", cfg, "-db"]).env("COMPONENT_BIND", GW_FRONT);
    for (i, n) in nodes.iter().enumerate() {
        let comp = n.component.expect("component listener");
        cmd.env(format!("NODE{}_COMPONENT", i + 1), comp.to_string())
            .env(
                format!("NODE{}_HTTP_PORT", i + 1),
                n.http.port().to_string(),
            );
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(GW_FRONT).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

/// biboumi for `biboumi.localhost`, connecting through HAProxy; its log
/// (everything it sent and received) goes to `dir/biboumi.log`.
fn start_biboumi(dir: &Path) -> Proc {
    let cfg = dir.join("biboumi.cfg");
    let (ip, port) = GW_FRONT.split_once(':').unwrap();
    std::fs::write(
        &cfg,
        format!(
            "hostname={GW}\npassword={GW_SECRET}\nxmpp_server_ip={ip}\nport={port}\n\
             identd_port=0\ndb_name={}\nlog_level=0\nrealname_customization=true\n\
             policy_directory={}\n",
            dir.join("biboumi.sqlite").display(),
            dir.display()
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("biboumi.log"))
        .unwrap();
    let child = Command::new("biboumi")
        .arg(&cfg)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start biboumi");
    Proc(child)
}

fn biboumi_log(dir: &Path) -> String {
    let all = std::fs::read_to_string(dir.join("biboumi.log")).unwrap_or_default();
    let lines: Vec<&str> = all.lines().collect();
    lines[lines.len().saturating_sub(150)..].join("\n")
}

/// Wait (at most 30 s) until `n`'s log has `needle` `count` times, while
/// biboumi keeps running (it gives up if its very first connection fails).
async fn log_count(
    n: &Server,
    needle: &str,
    count: usize,
    what: &str,
    dir: &Path,
    biboumi: &mut Proc,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while n.log().matches(needle).count() < count {
        let exited = biboumi.0.try_wait().ok().flatten();
        assert!(
            Instant::now() < deadline && exited.is_none(),
            "{what} (biboumi exited: {exited:?})\n--- node\n{}\n--- biboumi\n{}",
            n.log(),
            biboumi_log(dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait (at most 10 s) until `n` has the account `user` (replicated).
async fn has_account(n: &Server, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = n.user_cmd(&["list"]);
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == user)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{user} never reached this node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run one phase of tests/interop/slixmpp_biboumi.py; it must end DONE.
async fn phase(name: &str, users: &[(String, &str, &str)], dir: &Path, logs: &[&Server]) -> String {
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/slixmpp_biboumi.py"
    ))
    .args([name, GW, IRC]);
    for (addr, jid, pw) in users {
        cmd.args([addr.as_str(), jid, pw]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run python"))
        .await
        .expect("script task");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let nodes: Vec<String> = logs.iter().map(|n| n.log()).collect();
    assert!(
        out.status.success() && stdout.contains("DONE"),
        "phase {name} failed:\n{stdout}\n{}\n--- biboumi\n{}\n--- nodes\n{}",
        String::from_utf8_lossy(&out.stderr),
        biboumi_log(dir),
        nodes.join("\n--- next node\n")
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_through_biboumi_from_any_node_and_over_federation() {
    for (cmd, arg) in [
        ("biboumi", "--help"),
        ("ngircd", "--version"),
        ("haproxy", "-v"),
    ] {
        installed(cmd, arg);
    }
    let _turn = CLUSTER_TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _ircd = start_ngircd(d);
    let n1 = node(1, None);
    let n2 = node(2, Some(&n1));
    let mut n3 = node(3, Some(&n1));
    wait_members(&n1, SECRET, 3).await;
    n1.add_user("alice", "alice-pw");
    n1.add_user("carol", "carol-pw");
    has_account(&n2, "carol").await;
    let _haproxy = start_haproxy([&n1, &n2, &n3]);
    let mut biboumi = start_biboumi(d);
    let bib = &mut biboumi;
    log_count(
        &n3,
        "component connected",
        1,
        "biboumi never reached node 3",
        d,
        bib,
    )
    .await;
    let prosody = Prosody::start(n2.s2s.expect("s2s on"), PROSODY_C2S, PROSODY_S2S, false);
    prosody.register("pete", "pete-pw");

    let alice = (n1.c2s.to_string(), "alice@starling.localhost", "alice-pw");
    let carol = (n2.c2s.to_string(), "carol@starling.localhost", "carol-pw");
    let pete = (
        format!("127.0.0.1:{PROSODY_C2S}"),
        "pete@prosody.localhost",
        "pete-pw",
    );
    let users = [alice.clone(), carol, pete.clone()];
    let out = phase("chat", &users, d, &[&n1, &n2, &n3]).await;
    for step in [
        "OK chat: alice entered",
        "OK chat: messages both ways with alice",
        "OK chat: the IRC nick change reached XMPP as 303",
        "OK second node: carol entered",
        "OK second node: messages both ways with carol",
        "OK chat: private messages both ways with alice",
        "OK chat: private messages both ways with carol",
        "OK chat: ad-hoc commands listed",
        "OK federation: pete entered",
        "OK federation: messages both ways with pete",
        "OK chat: the IRC part reached XMPP",
        "OK chat: an IRC quit reached XMPP",
    ] {
        assert!(out.contains(step), "missing {step:?} in\n{out}");
    }
    // The gateway's stanzas to Prosody left node 3 on a link of its own
    // domain (dialback-verified by Prosody through node 2).
    let log = n3.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("local={GW}")) && l.contains("outbound link ready")),
        "no link from {GW}:\n{log}\n--- prosody\n{}",
        prosody.log()
    );

    // biboumi crashes (SIGKILL): a readable error for entering, a group
    // message and a private message, for a user here and for the Prosody
    // user; started again, it works.
    let _ = biboumi.0.kill();
    let _ = biboumi.0.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !n3.log().contains("component disconnected") {
        assert!(Instant::now() < deadline, "node 3 never saw biboumi go");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let both = [alice.clone(), pete.clone()];
    let out = phase("down", &both, d, &[&n1, &n2, &n3]).await;
    assert!(
        out.contains("is not connected")
            && out.contains("OK down: pete@prosody.localhost's group message"),
        "{out}"
    );
    biboumi = start_biboumi(d);
    let bib = &mut biboumi;
    log_count(
        &n3,
        "component connected",
        2,
        "biboumi never came back",
        d,
        bib,
    )
    .await;
    let one = std::slice::from_ref(&alice);
    phase("again", one, d, &[&n1, &n3]).await;

    // Node 3 drains while biboumi is paused (so it cannot reconnect yet):
    // a readable error. Resumed, biboumi reconnects through HAProxy to
    // node 2, and the gateway works again.
    let pid = biboumi.0.id().to_string();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    let status = n3.terminate_within(Duration::from_secs(30));
    assert!(status.success(), "node 3 drain: {status:?}");
    assert!(
        n3.log().contains("component closed: node draining"),
        "node 3 did not close the gateway's stream:\n{}",
        n3.log()
    );
    let out = phase("down", one, d, &[&n1, &n2]).await;
    assert!(out.contains("is not connected"), "{out}");
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let bib = &mut biboumi;
    log_count(
        &n2,
        "component connected",
        1,
        "biboumi never reached node 2",
        d,
        bib,
    )
    .await;
    phase("again", one, d, &[&n1, &n2]).await;
    assert!(
        std::fs::read_to_string(d.join("biboumi.log"))
            .unwrap_or_default()
            .contains("system-shutdown"),
        "biboumi was not told why node 3 closed its stream"
    );
}
