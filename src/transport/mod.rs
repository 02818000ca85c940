//! Layer 5, transport (ARCHITECTURE.md, "Layers"): the streams. Stream
//! negotiation, client connections (TCP, WebSocket, BOSH), federation,
//! external components, and the context they are given
//! (`context::TransportCtx`).

pub mod c2s;
pub mod component;
pub mod context;
pub mod s2s;
pub mod stream;
