//! Interop with slixmpp, a client library we did not write. `.ci/run` makes
//! the venv (.venv, from tests/interop/requirements.txt); STARLING_PYTHON
//! points elsewhere if you keep one of your own.
mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn python() -> String {
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

#[test]
fn slixmpp_two_accounts_chat_ping_disco() {
    let s = Server::start();
    s.add_user("alice", "alice-pw");
    s.add_user("bob", "bob-pw");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/slixmpp_basic.py"
    );
    let mut child = Command::new(python())
        .arg(script)
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
        assert!(waited < Duration::from_secs(90), "slixmpp script hung");
        std::thread::sleep(Duration::from_millis(100));
        waited += Duration::from_millis(100);
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "slixmpp failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
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
