//! Group chat (XEP-0045) with slixmpp's XEP-0045 plugin: one node, and
//! three nodes with the occupants spread over them (the room lives on the
//! node its creator's join reached; the others reach it over the mesh).
mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "muc-secret";
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// Run tests/interop/slixmpp_muc.py with each user on `nodes[i % len]`.
fn run_muc_script(nodes: &[&Server]) -> String {
    let mut args = vec![DOMAIN.to_string(), format!("conference.{DOMAIN}")];
    for (i, u) in USERS.iter().enumerate() {
        args.push(nodes[i % nodes.len()].c2s.to_string());
        args.push(u.to_string());
        args.push(format!("{u}-pw"));
    }
    let script = format!(
        "{}/tests/interop/slixmpp_muc.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut child = Command::new(python())
        .arg(&script)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    let mut waited = Duration::ZERO;
    while child.try_wait().expect("wait").is_none() {
        if waited > Duration::from_secs(180) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let logs: Vec<String> = nodes.iter().map(|n| n.log()).collect();
    assert!(
        out.status.success(),
        "slixmpp_muc.py failed:\n{stdout}\n{}\nserver logs:\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs.join("\n----\n")
    );
    for step in [
        "OK room created",
        "OK configured",
        "OK entered",
        "OK nick conflict",
        "OK message to all",
        "OK subject",
        "OK private message",
        "OK nick change",
        "OK self-ping",
        "OK disco",
        "OK invitation",
        "OK kick",
        "OK ban",
        "OK password",
        "OK leave",
        "OK destroy",
        "ALL OK",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    stdout
}

#[test]
fn slixmpp_group_chat_on_one_node() {
    let s = Server::start();
    for u in USERS {
        s.add_user(u, &format!("{u}-pw"));
    }
    run_muc_script(&[&s]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slixmpp_group_chat_with_occupants_on_three_nodes() {
    let _turn = CLUSTER_TURN.lock().await;
    let n1 = cluster_node(1, None, SECRET, &[]);
    let n2 = cluster_node(2, Some(&n1), SECRET, &[]);
    let n3 = cluster_node(3, Some(&n1), SECRET, &[]);
    wait_members(&n1, SECRET, 3).await;
    for u in USERS {
        n1.add_user(u, &format!("{u}-pw"));
    }
    // Accounts reach every node before the clients log in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = tokio::task::spawn_blocking(move || {
        let out = run_muc_script(&[&n1, &n2, &n3]);
        drop((n1, n2, n3));
        out
    })
    .await
    .expect("join");
    assert!(out.contains("ALL OK"));
}
