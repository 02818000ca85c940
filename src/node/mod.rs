//! Layer 6, node (ARCHITECTURE.md, "Layers"): wiring and operations.
//! Start-up and the wiring of the layers' contexts (`server`), drain,
//! liveness, HTTP, the admin socket and client, memory trimming, `starling
//! cluster up`/`certs`, file upload, and the leader's sweeps.

pub mod admin;
pub mod admin_client;
pub mod admin_http;
pub mod drain;
pub mod http;
pub mod ip_reports;
pub mod liveness;
pub mod local_cluster;
pub mod memory;
pub mod mesh_certs;
pub mod server;
pub mod session_events;
pub mod temporary_accounts;
pub mod upload;
