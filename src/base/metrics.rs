//! What the node counts, for `/metrics` (Prometheus/OpenMetrics text,
//! prometheus-client). Counters are bumped where things happen, through
//! handles made once (no lookup or allocation per stanza); gauges that
//! describe current state (sessions, Raft, queues, stored messages) are set
//! from the live node just before each scrape (`http.rs`).
//!
//! One registry per process: a test that runs several servers in one
//! process sees their sums (the integration tests run nodes as processes).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, &'static str)>;
pub type OwnedLabels = Vec<(&'static str, String)>;

/// The stanza kinds counted.
pub const KINDS: [&str; 3] = ["message", "presence", "iq"];

pub struct Metrics {
    registry: Registry,
    /// Sessions by transport (c2s, websocket, bosh, s2s_in, s2s_out, component).
    pub sessions: Family<Labels, Gauge>,
    /// Successful logins by SASL mechanism.
    pub logins: Family<Labels, Counter>,
    /// Failed logins by SASL condition.
    pub login_failures: Family<OwnedLabels, Counter>,
    stanzas_in: [Counter; 3],
    stanzas_out: [Counter; 3],
    s2s_in: Counter,
    s2s_out: Counter,
    /// Stanza errors the server sent, by condition.
    pub stanza_errors: Family<Labels, Counter>,
    /// Stream errors the server sent, by condition.
    pub stream_errors: Family<Labels, Counter>,
    /// From a client's message to the server owning it (its XEP-0198 ack),
    /// by where the recipient was: a session here, on another node, or
    /// neither (offline storage, another server, a service).
    ack_local: Histogram,
    ack_cross_node: Histogram,
    ack_other: Histogram,
    /// Push notifications sent (XEP-0357).
    pub push_sent: Counter,
    /// Connections, logins and links refused or slowed by a limit, by
    /// limit (connections-per-ip, logins-per-ip, s2s-links-per-domain,
    /// s2s-stanzas-per-domain).
    pub limited: Family<Labels, Counter>,
    /// Set before each scrape.
    pub gauges: Family<Labels, Gauge>,
    pub node_gauges: Family<OwnedLabels, Gauge>,
}

fn ack_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("starling");
        let sessions = Family::<Labels, Gauge>::default();
        registry.register("sessions", "Live sessions by transport", sessions.clone());
        let logins = Family::<Labels, Counter>::default();
        registry.register(
            "logins",
            "Successful logins by SASL mechanism",
            logins.clone(),
        );
        let login_failures = Family::<OwnedLabels, Counter>::default();
        registry.register(
            "login_failures",
            "Failed logins by SASL failure condition",
            login_failures.clone(),
        );
        let stanzas = Family::<Labels, Counter>::default();
        registry.register(
            "stanzas",
            "Stanzas by direction (in: from clients and other servers; out: to them) and kind",
            stanzas.clone(),
        );
        let counter = |dir: &'static str, kind: &'static str| {
            stanzas
                .get_or_create(&vec![("direction", dir), ("kind", kind)])
                .clone()
        };
        let stanzas_in = KINDS.map(|k| counter("in", k));
        let stanzas_out = KINDS.map(|k| counter("out", k));
        let s2s = Family::<Labels, Counter>::default();
        registry.register(
            "s2s_stanzas",
            "Stanzas on server-to-server links by direction",
            s2s.clone(),
        );
        let s2s_in = s2s.get_or_create(&vec![("direction", "in")]).clone();
        let s2s_out = s2s.get_or_create(&vec![("direction", "out")]).clone();
        let limited = Family::<Labels, Counter>::default();
        registry.register(
            "limited",
            "Connections, logins and server-to-server links refused or slowed by a limit",
            limited.clone(),
        );
        let stanza_errors = Family::<Labels, Counter>::default();
        registry.register(
            "stanza_errors",
            "Stanza errors sent, by condition",
            stanza_errors.clone(),
        );
        let stream_errors = Family::<Labels, Counter>::default();
        registry.register(
            "stream_errors",
            "Stream errors sent, by condition",
            stream_errors.clone(),
        );
        let ack =
            Family::<Labels, Histogram>::new_with_constructor(ack_histogram as fn() -> Histogram);
        registry.register(
            "message_ack_seconds",
            "From a client's message to the server owning it (XEP-0198 ack), by where the recipient was",
            ack.clone(),
        );
        let ack_local = ack.get_or_create(&vec![("recipient", "local")]).clone();
        let ack_cross_node = ack
            .get_or_create(&vec![("recipient", "other_node")])
            .clone();
        let ack_other = ack.get_or_create(&vec![("recipient", "elsewhere")]).clone();
        let push_sent = Counter::default();
        registry.register(
            "push_notifications",
            "Push notifications (XEP-0357) sent to app servers",
            push_sent.clone(),
        );
        let gauges = Family::<Labels, Gauge>::default();
        registry.register(
            "state",
            "Current state: Raft (term, commit and applied index, lag, leader), stored messages, links, queues",
            gauges.clone(),
        );
        let node_gauges = Family::<OwnedLabels, Gauge>::default();
        registry.register(
            "mesh",
            "Per peer node: relay queue depth and reconnects",
            node_gauges.clone(),
        );
        Metrics {
            registry,
            sessions,
            logins,
            login_failures,
            stanzas_in,
            stanzas_out,
            s2s_in,
            s2s_out,
            stanza_errors,
            stream_errors,
            ack_local,
            ack_cross_node,
            ack_other,
            push_sent,
            limited,
            gauges,
            node_gauges,
        }
    }

    /// A stanza read from a client (`inbound`) or written to one.
    pub fn stanza(&self, inbound: bool, name: &str) {
        let i = match name {
            "message" => 0,
            "presence" => 1,
            "iq" => 2,
            _ => return,
        };
        if inbound {
            self.stanzas_in[i].inc();
        } else {
            self.stanzas_out[i].inc();
        }
    }

    /// Client stanzas read and written so far: (in, out).
    pub fn stanza_totals(&self) -> (u64, u64) {
        let sum = |c: &[Counter; 3]| c.iter().map(|c| c.get()).sum();
        (sum(&self.stanzas_in), sum(&self.stanzas_out))
    }

    /// A stanza on a server-to-server link.
    pub fn s2s_stanza(&self, inbound: bool) {
        if inbound {
            self.s2s_in.inc();
        } else {
            self.s2s_out.inc();
        }
    }

    /// A message acknowledged after `took`; `recipient` is "local",
    /// "other_node" or anything else.
    pub fn acked(&self, recipient: Recipient, took: Duration) {
        let h = match recipient {
            Recipient::Local => &self.ack_local,
            Recipient::OtherNode => &self.ack_cross_node,
            Recipient::Elsewhere => &self.ack_other,
        };
        h.observe(took.as_secs_f64());
    }

    /// Set a state gauge.
    pub fn set(&self, name: &'static str, value: i64) {
        self.gauges.get_or_create(&vec![("name", name)]).set(value);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics not encoded");
        }
        out
    }
}

/// A live session of one transport, counted while this lives.
pub struct Live(Gauge);

impl Live {
    pub fn new(transport: &'static str) -> Live {
        let g = get()
            .sessions
            .get_or_create(&vec![("transport", transport)])
            .clone();
        g.inc();
        Live(g)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where a message's recipient was when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipient {
    Local,
    OtherNode,
    Elsewhere,
}

/// The process's metrics.
pub fn get() -> &'static Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Metrics::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_exposition() {
        let m = Metrics::new();
        m.stanza(true, "message");
        m.stanza(true, "message");
        m.stanza(false, "iq");
        m.logins.get_or_create(&vec![("mechanism", "PLAIN")]).inc();
        m.acked(Recipient::Local, Duration::from_millis(1));
        m.set("raft_term", 7);
        let text = m.encode();
        assert!(
            text.contains(r#"starling_stanzas_total{direction="in",kind="message"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"starling_logins_total{mechanism="PLAIN"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"starling_state{name="raft_term"} 7"#),
            "{text}"
        );
        assert!(
            text.contains("starling_message_ack_seconds_count{recipient=\"local\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
