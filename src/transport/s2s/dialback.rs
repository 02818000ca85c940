//! Server Dialback (XEP-0220) with keys generated per XEP-0185 §3:
//! `HMAC-SHA256(SHA256(secret), receiving ' ' originating ' ' stream-id)`,
//! hex-encoded. The secret is derived from the cluster secret, so any node
//! can verify a key that another node of the cluster issued.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const NS: &str = "jabber:server:dialback";
/// The stream feature a server offers when it supports dialback (XEP-0220 §2.4).
pub const FEATURE_NS: &str = "urn:xmpp:features:dialback";

/// The dialback secret, one per cluster (derived, never the cluster secret itself).
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Secret {
    pub fn from_cluster_secret(cluster_secret: &str) -> Secret {
        let mut h = Sha256::new();
        h.update(b"starling dialback v1\0");
        h.update(cluster_secret.as_bytes());
        // XEP-0185 §3: the HMAC key is the SHA-256 of the secret.
        Secret(Sha256::digest(h.finalize()).into())
    }

    /// The key `originating` presents to `receiving` on stream `stream_id`.
    pub fn key(&self, receiving: &str, originating: &str, stream_id: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(receiving.as_bytes());
        mac.update(b" ");
        mac.update(originating.as_bytes());
        mac.update(b" ");
        mac.update(stream_id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Constant-time check of a key someone presented.
    pub fn verify(&self, receiving: &str, originating: &str, stream_id: &str, key: &str) -> bool {
        use subtle::ConstantTimeEq;
        let want = self.key(receiving, originating, stream_id);
        want.as_bytes().ct_eq(key.trim().as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bound_to_domains_and_stream() {
        let s = Secret::from_cluster_secret("cluster secret");
        let k = s.key("remote.example", "starling.example", "abc");
        assert_eq!(k.len(), 64);
        assert!(s.verify("remote.example", "starling.example", "abc", &k));
        assert!(!s.verify("remote.example", "starling.example", "abd", &k));
        assert!(!s.verify("other.example", "starling.example", "abc", &k));
        assert!(!s.verify("starling.example", "remote.example", "abc", &k));
        // Another node of the same cluster derives the same key.
        let s2 = Secret::from_cluster_secret("cluster secret");
        assert!(s2.verify("remote.example", "starling.example", "abc", &k));
        let other = Secret::from_cluster_secret("another cluster");
        assert!(!other.verify("remote.example", "starling.example", "abc", &k));
    }
}
