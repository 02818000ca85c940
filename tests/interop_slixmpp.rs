//! Interop with slixmpp, a client library we did not write. `.ci/run` makes
//! the venv (.venv, from tests/interop/requirements.txt); STARLING_PYTHON
//! points elsewhere if you keep one of your own.
mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// Run one script against a fresh server with alice and bob; returns stdout.
fn run_script(name: &str) -> String {
    run_script_for(name, &["alice", "bob"])
}

/// Run one script against a fresh server with these users (password:
/// name + "-pw"), passed as `HOST PORT DOMAIN USER PASS...`.
fn run_script_for(name: &str, users: &[&str]) -> String {
    let s = Server::start();
    let mut args = vec![
        "127.0.0.1".to_string(),
        s.c2s.port().to_string(),
        DOMAIN.to_string(),
    ];
    for u in users {
        s.add_user(u, &format!("{u}-pw"));
        args.push(u.to_string());
        args.push(format!("{u}-pw"));
    }
    let script = format!("{}/tests/interop/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python())
        .arg(&script)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    let mut waited = Duration::ZERO;
    while child.try_wait().unwrap().is_none() {
        if waited > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("{name} hung");
        }
        std::thread::sleep(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    stdout
}

#[test]
fn slixmpp_two_accounts_chat_ping_disco() {
    let stdout = run_script("slixmpp_basic.py");
    for step in [
        "OK login",
        "mech=SCRAM-SHA-256",
        "OK messages both ways",
        "OK ping",
        "OK disco",
        "ALL OK",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}

#[test]
fn slixmpp_subscription_presence_offline() {
    let stdout = run_script("slixmpp_im.py");
    for step in [
        "OK subscription both ways",
        "OK presence change seen",
        "OK offline seen",
        "OK offline messages delivered with delay",
        "ALL OK",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}

#[test]
fn slixmpp_message_archive() {
    let stdout = run_script_for("slixmpp_mam.py", &["alice", "bob", "carol"]);
    for step in [
        "OK disco",
        "OK carbons and mam ids match",
        "OK forged stanza-id replaced",
        "OK paging forward through 1001 in 11 pages",
        "OK paging backward through 1001",
        "OK slixmpp iterate",
        "OK filters with, after-id, before-id, ids, start, end",
        "OK flip-page",
        "OK unknown id is item-not-found",
        "OK prefs",
        "OK metadata",
        "OK second device sees history",
        "ALL OK",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}
