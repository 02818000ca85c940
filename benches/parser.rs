//! Stream parser throughput on a realistic stanza mix: chat messages,
//! presence with entity capabilities, iq round trips and receipts.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use starling::base::xml::{StreamEvent, XmlLimits, XmlStream};

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

fn stanza_mix(n: usize) -> Vec<u8> {
    let mut s = String::from(HEADER);
    for i in 0..n {
        match i % 5 {
            0 | 1 => s.push_str(&format!(
                "<message to='bob@localhost/phone' type='chat' id='m{i}'><body>Hello Bob, message number {i} &amp; some text to make it realistic.</body><active xmlns='http://jabber.org/protocol/chatstates'/><request xmlns='urn:xmpp:receipts'/></message>"
            )),
            2 => s.push_str(&format!(
                "<presence id='p{i}'><show>away</show><status>In a meeting</status><priority>5</priority><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://gajim.org' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>"
            )),
            3 => s.push_str(&format!("<iq type='get' id='i{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")),
            _ => s.push_str(&format!(
                "<message to='alice@localhost' id='r{i}'><received xmlns='urn:xmpp:receipts' id='m{}'/></message>\n",
                i - 1
            )),
        }
    }
    s.into_bytes()
}

fn parse_all(rt: &tokio::runtime::Runtime, input: &[u8]) -> usize {
    rt.block_on(async {
        let mut p = XmlStream::new(input, XmlLimits::default());
        let mut n = 0;
        loop {
            match p.next().await {
                Ok(StreamEvent::Stanza(_)) => n += 1,
                Ok(StreamEvent::Header(_)) | Ok(StreamEvent::Keepalive) => {}
                _ => return n,
            }
        }
    })
}

fn bench_parser(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let input = stanza_mix(10_000);
    assert_eq!(parse_all(&rt, &input), 10_000);
    let mut g = c.benchmark_group("parser");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("stanza_mix_10k", |b| b.iter(|| parse_all(&rt, &input)));
    g.finish();
}

criterion_group!(benches, bench_parser);
criterion_main!(benches);
