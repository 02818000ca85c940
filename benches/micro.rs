//! Micro-benchmarks of the hot paths (criterion): serializing a stanza,
//! looking a session up in the routing table, and the server side of a
//! SCRAM-SHA-256 exchange (what each login costs besides TLS and Raft).
//! The parser has its own bench (benches/parser.rs).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use starling::base::xml::{parse_fragment, Element};
use starling::model::sasl::credentials::{ScramHash, ScramKeys};
use starling::model::sasl::scram::client::ScramClient;
use starling::model::sasl::scram::ScramServer;
use starling::routing::router::Router;

fn serializer(c: &mut Criterion) {
    let msg: Element = parse_fragment(
        "<message to='bob@localhost/phone' from='alice@localhost/laptop' type='chat' id='m1'><body>Hello Bob &amp; friends, a message of typical length.</body><active xmlns='http://jabber.org/protocol/chatstates'/><request xmlns='urn:xmpp:receipts'/></message>",
    )
    .expect("stanza");
    c.bench_function("serialize chat message", |b| {
        b.iter(|| std::hint::black_box(msg.to_xml("jabber:client")))
    });
}

fn router_lookup(c: &mut Criterion) {
    // Entries need an actor address; a bare channel gives one without a System.
    let router = Router::default();
    let users = 10_000;
    let (tx, _rx) = actix::dev::channel::channel(16);
    let addr: actix::Addr<starling::transport::c2s::session::C2sSession> = actix::Addr::new(tx);
    for i in 0..users {
        let jid = jid::FullJid::new(&format!("user{i}@localhost/res")).expect("jid");
        router.bind(&jid, i as u64, std::sync::Arc::new(addr.clone()));
    }
    let probe: Vec<jid::FullJid> = (0..1000)
        .map(|i| jid::FullJid::new(&format!("user{}@localhost/res", i * 7 % users)).expect("jid"))
        .collect();
    let mut k = 0;
    c.bench_function("router lookup (10k sessions)", |b| {
        b.iter(|| {
            k = (k + 1) % probe.len();
            std::hint::black_box(router.get_full(&probe[k]).is_some())
        })
    });
}

fn scram_server(c: &mut Criterion) {
    let keys = ScramKeys::derive(
        ScramHash::Sha256,
        "pencil",
        b"saltsaltsaltsalt".to_vec(),
        4096,
    );
    c.bench_function("SCRAM-SHA-256 server exchange", |b| {
        b.iter_batched(
            || {
                // The client's side (with its PBKDF2) is set-up, not measured.
                let client = ScramClient::new(ScramHash::Sha256, "user", "pencil", None);
                let mut server = ScramServer::new(ScramHash::Sha256, false, None);
                let sf = server
                    .client_first(&client.first(), |u| {
                        Some((u.to_string(), Some(keys.clone())))
                    })
                    .expect("server-first");
                let (cf, _) = client.final_message(&sf).expect("client-final");
                (server, cf)
            },
            |(mut server, cf)| std::hint::black_box(server.client_final(&cf).expect("verified")),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, serializer, router_lookup, scram_server);
criterion_main!(benches);
