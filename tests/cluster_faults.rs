//! Issue 12's fault checker in CI: `tests/fault/run.sh` starts a fresh
//! three-node cluster of this build behind Debian's HAProxy and runs
//! `tests/fault/checker.py` (slixmpp clients with stream management,
//! chatting to bare and full JIDs) through a fault, then counts by id what
//! the server acknowledged against what arrived, live or at a final login.
//! Here: a rolling restart (three passes), kill -9 of a follower, kill -9
//! of the leader. The other scenarios (crash loop, SIGSTOP, a partition in
//! a network namespace) run from the same script by hand:
//! `bash tests/fault/run.sh target/debug/starling crash-loop sigstop partition`.
mod common;
use common::*;
use std::process::Command;

#[test]
fn rolling_restart_and_kill_9_lose_and_duplicate_nothing() {
    for tool in ["haproxy", "curl"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is not installed: run `bash .ci/run`"
        );
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fault/run.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(bin())
        .args(["rolling", "kill-follower", "kill-leader"])
        .env("STARLING_PYTHON", python())
        .output()
        .expect("run tests/fault/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The script repeats the scenario lines in a summary at the end.
    let summary = stdout.rsplit("--- summary").next().unwrap_or_default();
    let lines: Vec<&str> = summary
        .lines()
        .filter(|l| l.starts_with("SCENARIO "))
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "every scenario reports\n{stdout}\n--- stderr ---\n{stderr}"
    );
    for l in &lines {
        let acked: u64 = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("acked="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(acked > 100, "traffic flowed: {l}\n{stderr}");
        assert!(
            l.contains(" lost=0 ")
                && l.contains(" dup=0 ")
                && l.contains(" late=0 ")
                && l.ends_with("PASS"),
            "{l}\n--- stderr ---\n{stderr}"
        );
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
}
