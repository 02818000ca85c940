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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_with_trusted_certificates_use_sasl_external() {
    let pki = tempfile::tempdir().unwrap();
    let ca = make_pki(pki.path(), &["a.localhost", "b.localhost"]);
    // Each needs the other's s2s port for its static route: reserve them.
    let ports: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addr: Vec<String> = ports
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    drop(ports);
    let start = |me: &str, other: &str, my_addr: &str, other_addr: &str| {
        let cert = pki.path().join(format!("{me}.crt"));
        let key = pki.path().join(format!("{me}.key"));
        Server::start_with(&[
            ("STARLING_DOMAIN", me),
            ("STARLING_TLS_CERT", cert.to_str().unwrap()),
            ("STARLING_TLS_KEY", key.to_str().unwrap()),
            ("STARLING_S2S_LISTEN", my_addr),
            ("STARLING_S2S_CA_FILE", ca.to_str().unwrap()),
            (
                "STARLING_S2S_STATIC_ROUTES",
                &format!("{other}={other_addr}"),
            ),
            ("STARLING_LOG_LEVEL", "info"),
        ])
    };
    let a = start("a.localhost", "b.localhost", &addr[0], &addr[1]);
    let b = start("b.localhost", "a.localhost", &addr[1], &addr[0]);
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
