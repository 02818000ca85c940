//! Federation with a real ejabberd (Debian's `ejabberd`, started by
//! ../shared/peers/start-ejabberd.sh on loopback: ejabberd.localhost, c2s
//! 25222, s2s 25269; it resolves starling.localhost to 127.0.0.5 through a
//! private /etc/hosts, and dials every domain on one port, here 15279). A
//! user on Starling and a user on ejabberd complete a subscription to
//! "both", see each other online and exchange messages both ways, with
//! slixmpp as both clients: once with Starling as one node, once as a
//! three-node cluster (ejabberd's link lands on node 2, the Starling user
//! is on node 3). ejabberd matches `<stream:features>` by its literal name
//! (RFC 6120 §4.8.5); before Starling used the prefix, 9 of 20 steps failed.
//! Group chat both ways: an ejabberd user in a Starling room, a Starling
//! user in a room on ejabberd's MUC service.
mod common;
use common::*;
use std::process::Command;

const SECRET: &str = "federation-ejabberd-secret-0123456789";
const EJ_C2S: u16 = 25222;
const EJ_S2S: u16 = 25269;
/// Where ejabberd dials starling.localhost (127.0.0.5, from its hosts file).
const STARLING_S2S: &str = "127.0.0.5:15279";

fn peers() -> String {
    format!("{}/../shared/peers", env!("CARGO_MANIFEST_DIR"))
}

/// ejabberd from ../shared/peers with its data in a temp dir; stopped on drop.
struct Ejabberd {
    dir: tempfile::TempDir,
}

impl Ejabberd {
    fn start() -> Ejabberd {
        Ejabberd::start_naming(&[])
    }

    /// Start it with `names` also resolved to Starling's address. The
    /// shared script names only `starling.localhost` there; this runs a
    /// copy of ../shared/peers whose resolver tables (the Erlang one and
    /// the private /etc/hosts) list `names` beside it.
    fn start_naming(names: &[&str]) -> Ejabberd {
        assert!(
            Command::new("sh")
                .args(["-c", "command -v ejabberdctl"])
                .status()
                .is_ok_and(|s| s.success()),
            "ejabberd is not installed: run `bash .ci/run` (apt-get install ejabberd)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut scripts = peers();
        if !names.is_empty() {
            scripts = copy_peers_naming(dir.path(), names);
        }
        let out = Command::new("bash")
            .arg(format!("{scripts}/start-ejabberd.sh"))
            .arg("--fresh")
            .env("PEERS_TMP", dir.path())
            .env("PEERS_MAM", "0")
            .env("STARLING_IP", "127.0.0.5")
            .env("EJ_S2S_PORT", "15279")
            .output()
            .expect("run start-ejabberd.sh");
        let e = Ejabberd { dir };
        // The script gives the Erlang VM 30 s; on a loaded 2-core machine
        // it can take longer. The VM keeps starting: wait for it here.
        let slow =
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not listening");
        if slow && e.wait_started(std::time::Duration::from_secs(90)) {
            return e;
        }
        assert!(
            out.status.success(),
            "ejabberd did not start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            e.log()
        );
        e
    }

    fn register(&self, user: &str, password: &str) {
        let out = Command::new("bash")
            .arg(format!("{}/ejabberdctl.sh", peers()))
            .args(["register", user, "ejabberd.localhost", password])
            .env("PEERS_TMP", self.dir.path())
            .output()
            .expect("run ejabberdctl");
        assert!(out.status.success(), "ejabberdctl register: {out:?}");
    }

    /// Started (its log says so) and accepting on c2s, within `limit`.
    fn wait_started(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.log().contains("is started in the node")
                && std::net::TcpStream::connect("127.0.0.1:25222").is_ok()
            {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ejabberd/ejabberd.log")).unwrap_or_default()
    }
}

impl Drop for Ejabberd {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(format!("{}/stop-ejabberd.sh", peers()))
            .env("PEERS_TMP", self.dir.path())
            .output();
    }
}

/// A copy of ../shared/peers in `dir` whose ejabberd resolves `names` to
/// 127.0.0.5 (Starling's s2s address) as it does `starling.localhost`.
fn copy_peers_naming(dir: &std::path::Path, names: &[&str]) -> String {
    let copy = dir.join("peers");
    let status = Command::new("cp")
        .args(["-r", &peers()])
        .arg(&copy)
        .status()
        .expect("run cp");
    assert!(status.success(), "copy ../shared/peers");
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let inetrc = copy.join("ejabberd/inetrc");
    let mut table = std::fs::read_to_string(&inetrc).expect("read inetrc");
    table.push_str(&format!(
        "{{host, {{127,0,0,5}}, [{}]}}.\n",
        quoted.join(", ")
    ));
    std::fs::write(&inetrc, table).expect("write inetrc");
    let script = copy.join("start-ejabberd.sh");
    let text = std::fs::read_to_string(&script).expect("read start-ejabberd.sh");
    let line = "%s starling.localhost\\n";
    assert!(
        text.contains(line),
        "start-ejabberd.sh no longer writes {line:?} to its hosts file"
    );
    let text = text.replace(
        line,
        &format!("%s starling.localhost {}\\n", names.join(" ")),
    );
    std::fs::write(&script, text).expect("write start-ejabberd.sh");
    copy.to_string_lossy().into_owned()
}

fn starling_node(id: u64, join: Option<&Server>, s2s_listen: &str) -> Server {
    let route = format!("ejabberd.localhost=127.0.0.1:{EJ_S2S}");
    cluster_node(
        id,
        join,
        SECRET,
        &[
            ("STARLING_DOMAIN", "starling.localhost"),
            ("STARLING_S2S_LISTEN", s2s_listen),
            ("STARLING_S2S_VERIFY_CERTIFICATES", "false"),
            ("STARLING_S2S_STATIC_ROUTES", &route),
            ("STARLING_LOG_LEVEL", "info,starling::transport::s2s=trace"),
        ],
    )
}

fn check(out: &std::process::Output, ejabberd: &Ejabberd, nodes: &[&Server]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let logs: Vec<String> = nodes.iter().map(|n| n.log()).collect();
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "federation with ejabberd failed:\n{stdout}\n{}\n--- ejabberd\n{}\n--- starling\n{}",
        String::from_utf8_lossy(&out.stderr),
        ejabberd.log(),
        logs.join("\n--- next node\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_and_messages_with_ejabberd_single_node() {
    let _turn = CLUSTER_TURN.lock().await;
    let n = starling_node(1, None, STARLING_S2S);
    n.add_user("alice", "alice-pw");
    let ejabberd = Ejabberd::start();
    ejabberd.register("bob", "bob-pw");
    let out = federate(n.c2s, EJ_C2S, "bob@ejabberd.localhost/fed").await;
    check(&out, &ejabberd, &[&n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_and_messages_with_ejabberd_across_the_cluster() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = starling_node(1, None, "127.0.0.1:0");
    let n2 = starling_node(2, Some(&n1), STARLING_S2S);
    let n3 = starling_node(3, Some(&n1), "127.0.0.1:0");
    wait_members(&n1, SECRET, 3).await;
    // Through node 3's admin socket: committed and applied there on return.
    n3.add_user("alice", "alice-pw");
    let ejabberd = Ejabberd::start();
    ejabberd.register("bob", "bob-pw");
    let out = federate(n3.c2s, EJ_C2S, "bob@ejabberd.localhost/fed").await;
    check(&out, &ejabberd, &[&n2, &n3]);
}

/// XEP-0045 across servers: an ejabberd user enters a Starling room (the
/// room's stanzas to it leave from `conference.starling.localhost`, which
/// ejabberd verifies by dialback), and a Starling user enters a room on
/// ejabberd's MUC service. Two nodes: alice is on node 1, ejabberd's links
/// land on node 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_chat_with_ejabberd_both_ways() {
    let _turn = CLUSTER_TURN.lock().await;
    let routes = format!(
        "ejabberd.localhost=127.0.0.1:{EJ_S2S},conference.ejabberd.localhost=127.0.0.1:{EJ_S2S}"
    );
    let env = [
        ("STARLING_DOMAIN", "starling.localhost"),
        ("STARLING_S2S_VERIFY_CERTIFICATES", "false"),
        ("STARLING_S2S_STATIC_ROUTES", routes.as_str()),
        ("STARLING_LOG_LEVEL", "info,starling::transport::s2s=debug"),
    ];
    let n1 = cluster_node(1, None, SECRET, &env);
    let mut env2 = env.to_vec();
    env2.push(("STARLING_S2S_LISTEN", STARLING_S2S));
    let n2 = cluster_node(2, Some(&n1), SECRET, &env2);
    wait_members(&n1, SECRET, 2).await;
    n1.add_user("alice", "alice-pw");
    let ejabberd = Ejabberd::start_naming(&["conference.starling.localhost"]);
    ejabberd.register("bob", "bob-pw");
    let alice_at = n1.c2s.to_string();
    let bob_at = format!("127.0.0.1:{EJ_C2S}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/slixmpp_muc_federated.py"
            ))
            .env("PEER", "ejabberd")
            .args([
                "conference.starling.localhost",
                "conference.ejabberd.localhost",
            ])
            .args([
                alice_at.as_str(),
                "alice@starling.localhost/fed",
                "alice-pw",
            ])
            .args([bob_at.as_str(), "bob@ejabberd.localhost/fed", "bob-pw"])
            .output()
            .expect("run python")
    })
    .await
    .expect("client task");
    check(&out, &ejabberd, &[&n1, &n2]);
    let text = String::from_utf8_lossy(&out.stdout);
    for step in [
        "OK ejabberd user entered a starling room",
        "OK messages both ways in a starling room",
        "OK starling user in a room on ejabberd",
    ] {
        assert!(text.contains(step), "missing {step:?} in:\n{text}");
    }
}
