//! XEP-0313 query cost on a large archive: one user with 100,000 archived
//! messages (written as the cluster writes them: `ArchiveAppend` batches
//! of 512 applied to the sled store), then the last page of 50 asked for
//! 2,000 times, each answer read and parsed back into elements as the
//! query handler does. Also the store's bytes per archived message.
//! Run: cargo bench --bench archive_query

use std::ops::Bound;
use std::time::Instant;

use starling::model::state::archive::{ArchiveId, PageQuery};
use starling::model::state::{ArchiveEntry, Command, State};

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as
    // a quick smoke test on a small archive.
    let full = std::env::args().any(|a| a == "--bench");
    let (messages, queries): (u64, usize) = if full { (100_000, 2_000) } else { (5_000, 50) };
    run(messages, queries);
}

fn run(messages: u64, queries: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = State::open(dir.path()).expect("open");
    state
        .apply(&Command::CreateAccount {
            username: "alice".into(),
            credentials: starling::model::sasl::Credentials::new("pw").expect("credentials"),
        })
        .expect("account");
    let start = 1_780_000_000_000_000u64;
    let t = Instant::now();
    for chunk in 0..messages.div_ceil(512) {
        let entries = (chunk * 512..((chunk + 1) * 512).min(messages))
            .map(|i| ArchiveEntry {
                user: "alice".into(),
                id: ArchiveId::at(start + i * 1000) | 1,
                with: if i % 2 == 0 { "bob@localhost/phone" } else { "carol@localhost" }.into(),
                xml: format!(
                    "<message xmlns='jabber:client' from='alice@localhost/laptop' to='bob@localhost' type='chat' id='m{i}'><body>message number {i} of the benchmark</body><origin-id xmlns='urn:xmpp:sid:0' id='o{i}'/></message>"
                ),
            })
            .collect();
        state
            .apply(&Command::ArchiveAppend {
                entries,
                quota_bytes: 0,
            })
            .expect("append");
    }
    let fill = t.elapsed();
    let bytes = state.archive_bytes("alice").expect("bytes");
    state.flush().expect("flush");
    let on_disk = state.db().size_on_disk().expect("size");
    let mut lat = Vec::with_capacity(queries);
    for _ in 0..queries {
        let t = Instant::now();
        let page = state
            .archive_page(
                "alice",
                &PageQuery {
                    skip: 0,
                    lower: Bound::Unbounded,
                    upper: Bound::Unbounded,
                    with: None,
                    ids: None,
                    id_within: (0, u64::MAX),
                    max: 50,
                    backward: true,
                },
            )
            .expect("page");
        let parsed = page
            .items
            .iter()
            .filter(|a| starling::base::xml::parse_fragment(&a.xml).is_ok())
            .count();
        assert_eq!(parsed, 50);
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "archive of {messages} messages written in {:.2} s ({:.0} msg/s applied); {:.0} bytes per message (key + value)",
        fill.as_secs_f64(),
        messages as f64 / fill.as_secs_f64(),
        bytes as f64 / messages as f64
    );
    println!(
        "sled data dir after the fill: {:.0} bytes per message on disk",
        on_disk as f64 / messages as f64
    );
    println!(
        "last 50 of {messages}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {queries} queries",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
}
