//! Stored credentials: salted SCRAM keys (RFC 5802 §3), never the password.

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Iteration count for new credentials (RFC 7677 recommends at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

impl ScramHash {
    pub fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut out = [0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out);
                out.to_vec()
            }
            ScramHash::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }

    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => {
                let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("hmac takes any key");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes any key");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    pub fn h(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }
}

/// StoredKey and ServerKey for one hash, with the salt and iteration count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramKeys {
    pub fn derive(hash: ScramHash, password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let salted = hash.hi(password.as_bytes(), &salt, iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        ScramKeys {
            stored_key: hash.h(&client_key),
            server_key: hash.hmac(&salted, b"Server Key"),
            salt,
            iterations,
        }
    }
}

/// What an account stores: keys for each SCRAM hash we offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub sha1: ScramKeys,
    pub sha256: ScramKeys,
}

#[derive(Debug, thiserror::Error)]
#[error("password is not acceptable: {0}")]
pub struct BadPassword(&'static str);

/// SASLprep (RFC 4013) of a password; empty passwords are refused.
pub fn prepare_password(password: &str) -> Result<String, BadPassword> {
    if password.is_empty() {
        return Err(BadPassword("empty"));
    }
    stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .map_err(|_| BadPassword("contains prohibited characters"))
}

impl Credentials {
    pub fn new(password: &str) -> Result<Self, BadPassword> {
        Self::with_iterations(password, DEFAULT_ITERATIONS)
    }

    pub fn with_iterations(password: &str, iterations: u32) -> Result<Self, BadPassword> {
        let password = prepare_password(password)?;
        let mut salt1 = vec![0u8; 16];
        let mut salt256 = vec![0u8; 16];
        rand::thread_rng().fill_bytes(&mut salt1);
        rand::thread_rng().fill_bytes(&mut salt256);
        Ok(Credentials {
            sha1: ScramKeys::derive(ScramHash::Sha1, &password, salt1, iterations),
            sha256: ScramKeys::derive(ScramHash::Sha256, &password, salt256, iterations),
        })
    }

    pub fn keys(&self, hash: ScramHash) -> &ScramKeys {
        match hash {
            ScramHash::Sha1 => &self.sha1,
            ScramHash::Sha256 => &self.sha256,
        }
    }

    /// Check a plaintext password (for PLAIN) against the SHA-256 keys.
    pub fn verify_password(&self, password: &str) -> bool {
        let Ok(password) = prepare_password(password) else {
            return false;
        };
        let k = &self.sha256;
        let derived = ScramKeys::derive(ScramHash::Sha256, &password, k.salt.clone(), k.iterations);
        derived.stored_key.ct_eq(&k.stored_key).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 §3: user "user", password "pencil".
        use base64::Engine;
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .unwrap();
        let k = ScramKeys::derive(ScramHash::Sha256, "pencil", salt, 4096);
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let sig = ScramHash::Sha256.hmac(&k.server_key, auth.as_bytes());
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn verifies_plain_passwords() {
        let c = Credentials::with_iterations("secret", 64).unwrap();
        assert!(c.verify_password("secret"));
        assert!(!c.verify_password("Secret"));
        assert!(Credentials::new("").is_err());
    }
}
