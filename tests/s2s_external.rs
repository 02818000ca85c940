//! SASL EXTERNAL between servers (RFC 6120 §6.4, XEP-0178): two Starling
//! servers whose certificates a test CA signed, each trusting that CA
//! (`[s2s] ca_file`), authenticate each other's domain by certificate
//! instead of dialback, and their users (slixmpp clients) exchange a
//! subscription and messages over the links.
mod common;
use common::*;
use std::process::Command;

/// A CA and, per domain, a certificate and key it signed; returns the paths.
fn make_pki(dir: &std::path::Path, domains: &[&str]) -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Starling test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    for d in domains {
        let mut p = CertificateParams::new(vec![d.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, *d);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{d}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{d}.key")), key.serialize_pem()).unwrap();
    }
    ca_path
}

/// Servers `a.localhost` and `b.localhost`, each with a certificate the
/// other trusts and a static route to the other; `extra_b` is set on b.
fn federated_pair(pki: &std::path::Path, extra_b: &[(&str, &str)]) -> (Server, Server) {
    let ca = make_pki(pki, &["a.localhost", "b.localhost"]);
    // Each needs the other's s2s address for its static route, before
    // either starts. A port reserved on 127.0.0.1 and let go can be taken
    // (as an outgoing connection's port) before the server binds it, so
    // each pair gets loopback addresses of its own and a fixed port below
    // the ephemeral range.
    static PAIRS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    let n = PAIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let addr: Vec<String> = (1..=2u8)
        .map(|i| format!("127.0.77.{}:25269", n.wrapping_mul(2).wrapping_add(i)))
        .collect();
    let start = |me: &str, other: &str, my_addr: &str, other_addr: &str, extra: &[(&str, &str)]| {
        let cert = pki.join(format!("{me}.crt"));
        let key = pki.join(format!("{me}.key"));
        let route = format!("{other}={other_addr}");
        let mut env = vec![
            ("STARLING_DOMAIN", me),
            ("STARLING_TLS_CERT", cert.to_str().unwrap()),
            ("STARLING_TLS_KEY", key.to_str().unwrap()),
            ("STARLING_S2S_LISTEN", my_addr),
            ("STARLING_S2S_CA_FILE", ca.to_str().unwrap()),
            ("STARLING_S2S_STATIC_ROUTES", &route),
            ("STARLING_LOG_LEVEL", "info"),
        ];
        env.extend_from_slice(extra);
        Server::start_with(&env)
    };
    let a = start("a.localhost", "b.localhost", &addr[0], &addr[1], &[]);
    let b = start("b.localhost", "a.localhost", &addr[1], &addr[0], extra_b);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_with_trusted_certificates_use_sasl_external() {
    let pki = tempfile::tempdir().unwrap();
    let (a, b) = federated_pair(pki.path(), &[]);
    a.add_user("alice", "alice-pw");
    b.add_user("bob", "bob-pw");
    let (ac, bc) = (a.c2s, b.c2s);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/slixmpp_federation.py"
            ))
            .args([ac.ip().to_string(), ac.port().to_string()])
            .args(["alice@a.localhost/x", "alice-pw"])
            .args([bc.ip().to_string(), bc.port().to_string()])
            .args(["bob@b.localhost/x", "bob-pw"])
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "{stdout}\n--- a\n{}\n--- b\n{}",
        a.log(),
        b.log()
    );
    for (s, name) in [(&a, "a"), (&b, "b")] {
        let log = s.log();
        assert!(
            log.contains("authenticated with SASL EXTERNAL"),
            "{name} used SASL EXTERNAL:\n{log}"
        );
        assert!(
            !log.contains("dialback remote="),
            "{name} needed no dialback:\n{log}"
        );
    }
}

/// The limits of an authenticated incoming link (RFC 6120 §13.12): a peer
/// sending faster than `[s2s] rate_bytes_per_sec` is read no faster than
/// that (slowed, nothing dropped), and a link silent for
/// `[s2s] idle_timeout_secs` is closed; the next message opens a new one.
/// Only b (the receiving side) has the small limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_peer_is_slowed_and_an_idle_link_closes() {
    let pki = tempfile::tempdir().unwrap();
    const RATE: u64 = 4000;
    let (a, b) = federated_pair(
        pki.path(),
        &[
            ("STARLING_S2S_RATE_BYTES_PER_SEC", "4000"),
            ("STARLING_S2S_RATE_BURST_BYTES", "4000"),
            ("STARLING_S2S_IDLE_TIMEOUT_SECS", "3"),
        ],
    );
    a.add_user("alice", "alice-pw");
    b.add_user("bob", "bob-pw");
    let mut alice = Client::login_at(a.c2s, "a.localhost", "alice", "alice-pw", "x").await;
    let mut bob = Client::login_at(b.c2s, "b.localhost", "bob", "bob-pw", "x").await;
    bob.send("<presence/>").await;
    bob.stanza("presence").await;
    let body = "z".repeat(1000);
    let send = |i: usize| {
        format!("<message to='bob@b.localhost/x' id='m{i}' type='chat'><body>{i} {body}</body></message>")
    };
    // The link is set up and carries a first message.
    alice.send(&send(0)).await;
    let got = bob.stanza("message").await;
    assert_eq!(got.attr("id"), Some("m0"), "first message");
    // Then 30 kB at once: b reads it at 4 kB/s after a 4 kB burst.
    const N: usize = 30;
    let started = std::time::Instant::now();
    for i in 1..=N {
        alice.send(&send(i)).await;
    }
    let mut ids = Vec::new();
    while ids.len() < N {
        let m = bob.stanza("message").await;
        ids.push(m.attr("id").unwrap_or_default().to_string());
    }
    let took = started.elapsed();
    let want: Vec<String> = (1..=N).map(|i| format!("m{i}")).collect();
    assert_eq!(ids, want, "every message, in order, none dropped");
    let bytes = (N * send(1).len()) as u64;
    let floor = std::time::Duration::from_secs_f64((bytes - 4000) as f64 / RATE as f64 * 0.8);
    assert!(
        took >= floor,
        "{bytes} bytes at {RATE} B/s took only {took:?} (at least {floor:?} expected)"
    );
    // Silent for longer than the idle timeout: b closes the link.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !b.log().contains("closing an idle incoming link") {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle link was not closed:\n{}",
            b.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // And the next message gets through on a new link.
    alice.send(&send(N + 1)).await;
    let got = bob.stanza("message").await;
    assert_eq!(got.attr("id"), Some(format!("m{}", N + 1).as_str()));
}
