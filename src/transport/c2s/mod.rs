//! Client-to-server connections: listeners, the per-session actor, and the
//! reader and writer tasks around it.

pub mod bosh;
pub mod http_bridge;
pub mod io;
pub mod listener;
pub mod proxy_protocol;
pub mod session;
pub mod stream_management;
pub mod websocket;
