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
        assert!(
            Command::new("sh")
                .args(["-c", "command -v ejabberdctl"])
                .status()
                .is_ok_and(|s| s.success()),
            "ejabberd is not installed: run `bash .ci/run` (apt-get install ejabberd)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("bash")
            .arg(format!("{}/start-ejabberd.sh", peers()))
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
            ("STARLING_LOG_LEVEL", "info,starling::s2s=trace"),
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
