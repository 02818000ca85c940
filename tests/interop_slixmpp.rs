//! Interop with slixmpp, a client library we did not write. `.ci/run` makes
//! the venv (.venv, from tests/interop/requirements.txt); STARLING_PYTHON
//! points elsewhere if you keep one of your own.
mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// Run one script against a fresh server with alice and bob; returns stdout.
fn run_script(name: &str) -> String {
    let s = Server::start();
    s.add_user("alice", "alice-pw");
    s.add_user("bob", "bob-pw");
    let script = format!("{}/tests/interop/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python())
        .arg(&script)
        .args([
            "127.0.0.1",
            &s.c2s.port().to_string(),
            DOMAIN,
            "alice",
            "alice-pw",
            "bob",
            "bob-pw",
        ])
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
