//! Layer 0, base (ARCHITECTURE.md, "Layers"): what every layer speaks.
//! The XML element tree and stream parser, stanza and stream errors,
//! JIDs as text, clocks and XEP-0082 time, TLS configuration, rate limits, per-address
//! limits and the process's metrics. Uses nothing else of the crate.

pub mod clock;
pub mod ip_limits;
pub mod jid_text;
pub mod metrics;
pub mod rate_limit;
pub mod stanza_error;
pub mod stream_error;
pub mod time;
pub mod tls;
pub mod xml;
