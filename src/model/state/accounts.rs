//! The accounts tree: username -> SCRAM credentials (JSON).

use super::StateError;
use crate::model::sasl::Credentials;

pub fn get(tree: &sled::Tree, username: &str) -> Result<Option<Credentials>, StateError> {
    match tree.get(username)? {
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
        None => Ok(None),
    }
}

pub fn create(
    tree: &super::tracked::Tracked,
    username: &str,
    creds: &Credentials,
) -> Result<(), StateError> {
    let value = serde_json::to_vec(creds)?;
    tree.compare_and_swap(username, None as Option<&[u8]>, Some(value))?
        .map_err(|_| StateError::AccountExists(username.to_string()))
}

pub fn set_password(
    tree: &super::tracked::Tracked,
    username: &str,
    creds: &Credentials,
) -> Result<(), StateError> {
    if !tree.contains_key(username)? {
        return Err(StateError::NoSuchAccount(username.to_string()));
    }
    tree.insert(username, serde_json::to_vec(creds)?)?;
    Ok(())
}

pub fn delete(tree: &super::tracked::Tracked, username: &str) -> Result<(), StateError> {
    tree.remove(username)?
        .map(|_| ())
        .ok_or_else(|| StateError::NoSuchAccount(username.to_string()))
}

pub fn list(tree: &sled::Tree) -> Result<Vec<String>, StateError> {
    tree.iter()
        .keys()
        .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
        .collect()
}
