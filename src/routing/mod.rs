//! Layer 3, routing (ARCHITECTURE.md, "Layers"): where a JID is. This
//! node's session table (`router`), the cluster's (`route`: relays over
//! the mesh, what makes a relayed message owned), written marks, and the
//! context routing code is given (`context::RoutingCtx`).

pub mod context;
pub mod route;
pub mod router;
pub mod written_marks;
