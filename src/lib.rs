//! Starling: a clustered XMPP server.

pub mod base;
pub mod im;
pub mod model;
pub mod node;
pub mod routing;
pub mod store;
pub mod transport;
