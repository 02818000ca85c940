//! Client-to-server connections: listeners, the per-session actor, and the
//! reader and writer tasks around it.

pub mod io;
pub mod listener;
pub mod proxy_protocol;
pub mod session;
pub mod stream_management;
