//! SASL (RFC 6120 §6): mechanisms, stored credentials and failure conditions.

pub mod anonymous;
pub mod credentials;
pub mod ht;
pub mod plain;
pub mod scram;
pub mod throttle;

pub use credentials::{Credentials, ScramKeys};

/// SASL failure conditions (RFC 6120 §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslFailure {
    #[error("aborted")]
    Aborted,
    #[error("account-disabled")]
    AccountDisabled,
    #[error("credentials-expired")]
    CredentialsExpired,
    #[error("encryption-required")]
    EncryptionRequired,
    #[error("incorrect-encoding")]
    IncorrectEncoding,
    #[error("invalid-authzid")]
    InvalidAuthzid,
    #[error("invalid-mechanism")]
    InvalidMechanism,
    #[error("malformed-request")]
    MalformedRequest,
    #[error("mechanism-too-weak")]
    MechanismTooWeak,
    #[error("not-authorized")]
    NotAuthorized,
    #[error("temporary-auth-failure")]
    TemporaryAuthFailure,
}

/// Normalize a SASL username to the localpart of a JID at `domain`
/// (SASLprep then nodeprep, via the `jid` crate). None if it cannot be one.
pub fn normalize_username(user: &str, domain: &str) -> Option<String> {
    if user.is_empty() || user.contains(['@', '/']) {
        return None;
    }
    let jid = jid::BareJid::new(&format!("{user}@{domain}")).ok()?;
    jid.node().map(|n| n.as_str().to_string())
}

/// The mechanisms we implement, strongest first.
pub const MECHANISMS: [&str; 5] = [
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "PLAIN",
];
