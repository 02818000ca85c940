//! Layer 1, model (ARCHITECTURE.md, "Layers"): configuration, SASL
//! mechanisms and stored credentials, and the replicated state as typed
//! commands applied by one state machine. Uses only `base`.

pub mod config;
pub mod sasl;
pub mod state;
