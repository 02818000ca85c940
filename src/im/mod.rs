//! Layer 4, im (ARCHITECTURE.md, "Layers"): the IM rules and features.
//! Delivery, presence, the feature modules, hosted service domains, group
//! chat and publish-subscribe, and the context they are given
//! (`context::ImCtx`).

pub mod context;
pub mod delivery;
pub mod modules;
pub mod muc;
pub mod presence;
pub mod pubsub;
pub mod services;
