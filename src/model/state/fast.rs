//! FAST tokens (XEP-0484) as replicated state: per account and client
//! (its XEP-0388 user-agent id), the token in use and the one before it (a
//! client that missed the success carrying a new token still logs in with
//! the old one, once). A password change or the account's deletion revokes
//! them all.
//!
//! HT-SHA-256-NONE keys its HMAC with the token itself, so the token is
//! kept as issued; like a password hash, it never leaves the cluster.

use serde::{Deserialize, Serialize};

/// One issued token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastToken {
    pub token: String,
    /// The mechanism it is bound to (XEP-0484 §3.2).
    pub mechanism: String,
    /// Unix ms.
    pub issued_ms: u64,
    pub expiry_ms: u64,
}

/// The tokens of one client of one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastTokens {
    pub current: FastToken,
    pub previous: Option<FastToken>,
}

impl FastTokens {
    /// Which of them `token` is, if either.
    pub fn find(&self, token: impl Fn(&FastToken) -> bool) -> Option<&FastToken> {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|t| token(t))
    }
}
