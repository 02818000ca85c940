//! Layer 2, store (ARCHITECTURE.md, "Layers"): the replicated store.
//! Local reads and awaited commits through the cluster crate, and what a
//! committed entry means for this node.

pub mod replication;
