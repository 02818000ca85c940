//! Persistent state as typed commands applied by one state machine.
//!
//! Every write goes through [`State::apply`] with a [`Command`], so the
//! cluster can later replicate the same commands through Raft and apply them
//! on every node without touching the features that issue them.

pub mod accounts;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sasl::Credentials;

/// A change to persistent state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    CreateAccount {
        username: String,
        credentials: Credentials,
    },
    SetPassword {
        username: String,
        credentials: Credentials,
    },
    DeleteAccount {
        username: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("data directory {0} is in use by another process (is a node running?)")]
    Locked(String),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("no account {0}")]
    NoSuchAccount(String),
}

/// The node's replica of persistent state, kept in sled.
pub struct State {
    db: sled::Db,
    accounts: sled::Tree,
}

impl State {
    pub fn open(dir: &Path) -> Result<State, StateError> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .open()
            .map_err(|e| match &e {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    StateError::Locked(dir.display().to_string())
                }
                _ => StateError::Storage(e),
            })?;
        let accounts = db.open_tree("accounts")?;
        Ok(State { db, accounts })
    }

    /// Apply one command and make it durable before returning.
    pub fn apply(&self, cmd: &Command) -> Result<(), StateError> {
        match cmd {
            Command::CreateAccount {
                username,
                credentials,
            } => accounts::create(&self.accounts, username, credentials)?,
            Command::SetPassword {
                username,
                credentials,
            } => accounts::set_password(&self.accounts, username, credentials)?,
            Command::DeleteAccount { username } => accounts::delete(&self.accounts, username)?,
        }
        self.db.flush()?;
        Ok(())
    }

    pub fn credentials(&self, username: &str) -> Result<Option<Credentials>, StateError> {
        accounts::get(&self.accounts, username)
    }

    pub fn account_exists(&self, username: &str) -> bool {
        self.accounts.contains_key(username).unwrap_or(false)
    }

    pub fn list_accounts(&self) -> Result<Vec<String>, StateError> {
        accounts::list(&self.accounts)
    }

    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }
}
