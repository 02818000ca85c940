//! Per-connection limits: inbound rate, outbound queue, garbage input.
mod common;
use common::*;
use std::time::{Duration, Instant};

/// The stanza shaper (`limits.stanzas_per_sec`): at 20/s with a burst of
/// 40, 100 pings take at least 3 s, and every one is answered (the server
/// stops reading; it drops nothing).
#[tokio::test]
async fn stanzas_per_second_are_shaped() {
    let s = Server::start_with(&[("STARLING_LIMITS_STANZAS_PER_SEC", "20")]);
    s.add_user("u", "p");
    let mut c = Client::login(s.c2s, "u", "p", "r").await;
    let started = Instant::now();
    for i in 0..100 {
        c.send(&format!(
            "<iq type='get' id='p{i}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    }
    let mut answered = 0;
    while answered < 100 {
        let e = c.wait_for(|e| e.name == "iq").await;
        assert_eq!(e.attr("type"), Some("result"), "{e:?}");
        assert_eq!(e.attr("id"), Some(format!("p{answered}").as_str()));
        answered += 1;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2800),
        "100 stanzas passed a 20/s shaper in {took:?}"
    );
}

#[tokio::test]
async fn inbound_rate_is_limited() {
    let s = Server::start_with(&[
        ("STARLING_LIMITS_RATE_BYTES_PER_SEC", "8192"),
        ("STARLING_LIMITS_RATE_BURST_BYTES", "8192"),
    ]);
    s.add_user("u", "p");
    let mut c = Client::login(s.c2s, "u", "p", "r").await;
    let body = "x".repeat(2000);
    let started = Instant::now();
    // About 24 KiB at 8 KiB/s with an 8 KiB burst: at least ~2 s to get through.
    for i in 0..12 {
        c.send(&format!(
            "<message to='u@localhost/r' id='r{i}'><body>{body}</body></message>"
        ))
        .await;
    }
    let last = c.wait_for(|e| e.attr("id") == Some("r11")).await;
    assert_eq!(last.name, "message");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "12 x 2 KB passed the 8 KiB/s limit in {took:?}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off() {
    let s = Server::start_with(&[
        ("STARLING_LIMITS_OUTBOUND_QUEUE", "8"),
        ("STARLING_LIMITS_RATE_BYTES_PER_SEC", "100000000"),
        ("STARLING_LIMITS_RATE_BURST_BYTES", "100000000"),
    ]);
    s.add_user("fast", "p");
    s.add_user("slow", "p");
    let mut slow = Client::login(s.c2s, "slow", "p", "r").await;
    let mut fast = Client::login(s.c2s, "fast", "p", "r").await;
    // ~12 MB at a client that reads nothing: more than socket buffers hold.
    // Headlines, so nothing bounces back once the slow client is gone.
    let body = "y".repeat(60_000);
    for i in 0..200 {
        if !fast
            .try_send(&format!("<message type='headline' to='slow@localhost/r' id='f{i}'><body>{body}</body></message>"))
            .await
        {
            panic!("the sender was cut off at message {i}");
        }
    }
    // The slow client gets what was in flight, then the stream ends: with
    // <resource-constraint/> if the writer was idle, or cut mid-write.
    let mut got = 0;
    let ending = loop {
        match slow.read().await {
            Got::Element(el) if el.name == "message" => got += 1,
            Got::Element(el) if el.name == "error" => break condition(&el),
            Got::End | Got::Closed => break "closed".to_string(),
            other => panic!("unexpected {other:?} after {got} messages"),
        }
    };
    assert!(
        ending == "resource-constraint" || ending == "closed",
        "{ending}"
    );
    assert!(
        got < 200,
        "everything was queued ({got}); nothing bounded it"
    );
    assert!(
        s.log().contains("client is not reading") || s.log().contains("too many stanzas queued")
    );
    // The sender is unaffected.
    let r = fast
        .iq(iq_get(
            Some("localhost"),
            starling::base::xml::Element::new("ping", "urn:xmpp:ping"),
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
}

#[tokio::test]
async fn garbage_never_takes_the_server_down() {
    let s = Server::start();
    s.add_user("u", "p");
    // Deterministic pseudo-random bytes (xorshift), some after a valid header.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for round in 0..40 {
        let mut bytes = Vec::with_capacity(2048);
        for _ in 0..2048 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.push((x & 0xff) as u8);
        }
        let mut c = Client::connect(s.c2s).await;
        if round % 2 == 0 {
            c.send(HEADER).await;
        }
        // Sprinkle markup so the parser gets past the first byte.
        let mut payload = b"<message><body>".to_vec();
        payload.extend_from_slice(&bytes);
        let _ = c.try_send(&String::from_utf8_lossy(&payload)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read()).await;
    }
    // Still serving.
    let mut c = Client::login(s.c2s, "u", "p", "r").await;
    let r = c
        .iq(iq_get(
            Some("localhost"),
            starling::base::xml::Element::new("ping", "urn:xmpp:ping"),
        ))
        .await;
    assert_eq!(r.attr("type"), Some("result"));
}
