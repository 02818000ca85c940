//! STARTTLS and direct TLS (RFC 6120 §5, XEP-0368).
mod common;
use common::*;

#[tokio::test]
async fn tls_is_required_before_auth() {
    let s = Server::start();
    s.add_user("alice", "pw");
    let mut c = Client::connect(s.c2s).await;
    let f = c.open().await;
    let tls = f
        .get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .expect("starttls offered");
    assert!(tls
        .get_child("required", "urn:ietf:params:xml:ns:xmpp-tls")
        .is_some());
    assert!(
        f.get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
            .is_none(),
        "no SASL before TLS"
    );
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        b64(b"\0alice\0pw")
    ))
    .await;
    assert_eq!(c.stream_error().await, "policy-violation");
}

#[tokio::test]
async fn bytes_pipelined_after_starttls_are_discarded() {
    let s = Server::start();
    s.add_user("alice", "pw");
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    // RFC 6120 §5.4.3.3: anything sent after <starttls/> before the handshake
    // must be ignored; here it would be a complete (fake) authentication.
    c.send(&format!(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
        b64(b"\0alice\0pw")
    ))
    .await;
    let p = c.element().await;
    assert_eq!(p.name, "proceed");
    let mut c = c.upgrade().await;
    // The stream after TLS starts fresh: features, not a SASL success.
    let f = c.open().await;
    assert!(f
        .get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
        .is_some());
    assert!(
        c.quiet_for(std::time::Duration::from_millis(300)).await,
        "pipelined bytes were processed"
    );
    c.auth_scram("SCRAM-SHA-256", "alice", "pw")
        .await
        .expect("auth");
}

#[tokio::test]
async fn direct_tls_login() {
    let s = Server::start();
    s.add_user("alice", "pw");
    let mut c = Client::connect_tls(s.c2s_tls.expect("direct TLS listener")).await;
    let f = c.open().await;
    assert!(
        f.get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
            .is_none(),
        "no STARTTLS on a TLS stream"
    );
    c.auth_scram("SCRAM-SHA-256-PLUS", "alice", "pw")
        .await
        .expect("auth");
    c.open().await;
    c.bind(Some("tls")).await.expect("bind");
}

#[tokio::test]
async fn plaintext_when_tls_is_not_required() {
    let s = Server::start_with(&[("STARLING_C2S_REQUIRE_TLS", "false")]);
    s.add_user("alice", "pw");
    let mut c = Client::connect(s.c2s).await;
    let f = c.open().await;
    let mechs: Vec<String> = f
        .get_child("mechanisms", "urn:ietf:params:xml:ns:xmpp-sasl")
        .expect("mechanisms")
        .elements()
        .map(|e| e.text())
        .collect();
    assert!(mechs.contains(&"SCRAM-SHA-256".to_string()));
    assert!(
        !mechs.contains(&"PLAIN".to_string()),
        "PLAIN only inside TLS"
    );
    assert!(!mechs.iter().any(|m| m.ends_with("-PLUS")));
    assert_eq!(
        c.auth_plain("alice", "pw").await,
        Err("encryption-required".into())
    );
    c.auth_scram("SCRAM-SHA-256", "alice", "pw")
        .await
        .expect("auth");
    c.open().await;
    c.bind(None).await.expect("bind");
}

/// `[tls] session_tickets`: off by default (no TLS 1.3 ticket after the
/// handshake), on when set. Checked with OpenSSL's client, which reports
/// each ticket it receives.
#[tokio::test]
async fn tls13_session_tickets_follow_the_setting() {
    fn tickets(addr: std::net::SocketAddr) -> usize {
        // stdin stays open for a second (tickets arrive after the
        // handshake), then s_client ends.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep 1 | timeout 10 openssl s_client -connect {addr} -tls1_3 -servername localhost"
            ))
            .output()
            .expect("openssl (bash .ci/run installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("TLSv1.3"), "handshake: {text}");
        text.matches("New Session Ticket arrived").count()
    }
    let off = Server::start();
    assert_eq!(tickets(off.c2s_tls.expect("direct TLS")), 0);
    let on = Server::start_with(&[("STARLING_TLS_SESSION_TICKETS", "true")]);
    assert!(tickets(on.c2s_tls.expect("direct TLS")) > 0);
}

/// Tickets on, a Java client that drives `SSLEngine` from a `Selector` the
/// way Smack's NIO TLS code does (tests/interop/java/XmppTlsProbe.java:
/// it keeps unwrapping while input remains, so the ticket record, which
/// yields no application bytes, does not stop it) logs in 30 times in a
/// row: STARTTLS, SASL PLAIN, bind and a ping, each step within 5 s. Most
/// logins resume the TLS session from a ticket, so tickets were in play.
#[test]
fn a_java_nio_tls_client_logs_in_with_tickets_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/java/XmppTlsProbe.java"
    );
    let javac = std::process::Command::new("javac")
        .args(["-d", dir.path().to_str().expect("utf-8 path"), src])
        .output()
        .expect("javac (a JDK; bash .ci/run installs one)");
    assert!(
        javac.status.success(),
        "javac: {}",
        String::from_utf8_lossy(&javac.stderr)
    );
    let s = Server::start_with(&[("STARLING_TLS_SESSION_TICKETS", "true")]);
    s.add_user("alice", "pw");
    let out = std::process::Command::new("timeout")
        .args([
            "120",
            "java",
            "-cp",
            dir.path().to_str().expect("utf-8 path"),
        ])
        .args([
            "XmppTlsProbe",
            "nio",
            &s.c2s.port().to_string(),
            "30",
            "1",
            "alice",
            "pw",
        ])
        .output()
        .expect("java");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("total=30 ok=30 stalls=0 errors=0"),
        "every login completes: {text}"
    );
    let full: usize = text
        .split("full handshakes (checkServerTrusted calls): ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the probe reports its full handshakes");
    assert!(full < 30, "sessions resumed from tickets: {text}");
}
