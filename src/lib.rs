//! Starling: a clustered XMPP server.

pub mod admin;
pub mod c2s;
pub mod clock;
pub mod component;
pub mod config;
pub mod delivery;
pub mod drain;
pub mod http;
pub mod liveness;
pub mod local_cluster;
pub mod modules;
pub mod presence;
pub mod rate_limit;
pub mod replication;
pub mod route;
pub mod router;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod session_events;
pub mod stanza_error;
pub mod state;
pub mod stream;
pub mod time;
pub mod tls;
pub mod xml;
