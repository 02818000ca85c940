//! Stream-level behaviour over real sockets: headers, RFC 6120 §11 XML
//! restrictions, size limits, timeouts and keepalives.
mod common;
use common::*;
use std::time::Duration;

/// Send `bytes` after a valid header and expect stream error `cond`.
async fn expect_error_after_header(s: &Server, bytes: &str, cond: &str) {
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    let mut c = c.starttls().await;
    c.open().await;
    c.send(bytes).await;
    assert_eq!(c.stream_error().await, cond, "input: {bytes:.80}");
}

#[tokio::test]
async fn bad_headers_get_stream_errors() {
    let s = Server::start();
    let cases = [
        ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='elsewhere.example' version='1.0'>", "host-unknown"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>", "host-unknown"),
        ("<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>", "invalid-namespace"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='localhost' version='1.0'>", "invalid-namespace"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>", "unsupported-version"),
        ("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='2.0'>", "unsupported-version"),
        ("<?xml version='1.0' encoding='UTF-16'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>", "unsupported-encoding"),
        ("<foo:stream xmlns='jabber:client' to='localhost' version='1.0'>", "bad-namespace-prefix"),
    ];
    for (header, cond) in cases {
        let mut c = Client::connect(s.c2s).await;
        c.send(header).await;
        assert_eq!(c.stream_error().await, cond, "header: {header}");
    }
}

#[tokio::test]
async fn restricted_xml_is_refused() {
    let s = Server::start();
    for bad in [
        "<!-- a comment --><presence/>",
        "<?my-pi data?><presence/>",
        "<message to='a@localhost'><body>&custom;</body></message>",
        "<message><body>&nbsp;</body></message>",
    ] {
        expect_error_after_header(&s, bad, "restricted-xml").await;
    }
    // The predefined entities and character references are fine.
    s.add_user("ent", "pw");
    let mut c = Client::login(s.c2s, "ent", "pw", "r").await;
    c.send("<message to='ent@localhost/r' id='e1'><body>&#x41;&#66;&amp;&lt;&gt;&apos;&quot;</body></message>").await;
    let m = c.stanza("message").await;
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "AB&<>'\""
    );
    // A DTD before the stream header.
    let mut c = Client::connect(s.c2s).await;
    c.send("<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY boom 'x'>]><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>").await;
    assert_eq!(c.stream_error().await, "restricted-xml");
}

#[tokio::test]
async fn malformed_and_oversized_input() {
    let s = Server::start_with(&[("STARLING_LIMITS_MAX_STANZA_SIZE", "65536")]);
    expect_error_after_header(&s, "<message><body></message>", "not-well-formed").await;
    expect_error_after_header(&s, "<message a='1' a='2'/>", "not-well-formed").await;
    expect_error_after_header(&s, "<x:message/>", "bad-namespace-prefix").await;
    // Bigger than the limit, sent without ever closing the element.
    let big = format!("<message><body>{}", "A".repeat(100_000));
    expect_error_after_header(&s, &big, "policy-violation").await;
    let deep = "<a>".repeat(200);
    expect_error_after_header(&s, &format!("<message>{deep}"), "policy-violation").await;
    // The server is still fine.
    s.add_user("u", "p");
    Client::login(s.c2s, "u", "p", "r").await;
}

#[tokio::test]
async fn oversized_stanza_after_login() {
    let s = Server::start_with(&[("STARLING_LIMITS_MAX_STANZA_SIZE", "16384")]);
    s.add_user("u", "p");
    let mut c = Client::login(s.c2s, "u", "p", "r").await;
    let body = "B".repeat(20_000);
    c.try_send(&format!(
        "<message to='u@localhost'><body>{body}</body></message>"
    ))
    .await;
    assert_eq!(c.stream_error().await, "policy-violation");
}

#[tokio::test]
async fn stanzas_before_auth_are_refused() {
    let s = Server::start();
    expect_error_after_header(
        &s,
        "<message to='a@localhost'><body>hi</body></message>",
        "not-authorized",
    )
    .await;
    expect_error_after_header(
        &s,
        "<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>",
        "not-authorized",
    )
    .await;
}

#[tokio::test]
async fn unauthenticated_streams_time_out() {
    let s = Server::start_with(&[("STARLING_LIMITS_AUTH_TIMEOUT_SECS", "1")]);
    let mut c = Client::connect(s.c2s).await;
    c.open().await;
    assert_eq!(c.stream_error().await, "connection-timeout");
    // A connection that never even sends a header is closed too.
    let mut c = Client::connect(s.c2s).await;
    assert_eq!(c.stream_error().await, "connection-timeout");
}

#[tokio::test]
async fn keepalives_are_accepted_and_idle_clients_pinged() {
    let s = Server::start_with(&[
        ("STARLING_LIMITS_IDLE_PING_SECS", "1"),
        ("STARLING_LIMITS_PING_TIMEOUT_SECS", "2"),
    ]);
    s.add_user("u", "p");
    let mut c = Client::login(s.c2s, "u", "p", "r").await;
    // Whitespace keepalives keep the session and are not errors.
    for _ in 0..3 {
        c.send(" \n ").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Silent now: the server pings (XEP-0199); answering keeps the session.
    let ping = c
        .wait_for(|e| e.name == "iq" && e.get_child("ping", "urn:xmpp:ping").is_some())
        .await;
    assert_eq!(ping.attr("type"), Some("get"));
    c.send(&format!(
        "<iq type='result' id='{}' to='localhost'/>",
        ping.attr("id").unwrap()
    ))
    .await;
    let r = c
        .iq(iq_get(
            Some("localhost"),
            starling::base::xml::Element::new("ping", "urn:xmpp:ping"),
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // Stop answering: the server drops the client.
    let started = std::time::Instant::now();
    let cond = c.stream_error().await;
    assert_eq!(cond, "connection-timeout");
    assert!(started.elapsed() < Duration::from_secs(8));
}
