//! HT-SHA-256-NONE (draft-schmaus-kitten-sasl-ht), the mechanism FAST
//! (XEP-0484) uses: the client proves it holds a token with
//! HMAC-SHA-256(token, "Initiator"), the server answers with
//! HMAC-SHA-256(token, "Responder"). -NONE: no channel binding data.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SaslFailure;

pub const MECHANISM: &str = "HT-SHA-256-NONE";

fn hmac(token: &[u8], what: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token) else {
        return Vec::new();
    };
    mac.update(what);
    mac.finalize().into_bytes().to_vec()
}

/// The client's message: the username, a NUL, and its proof.
pub fn parse(message: &[u8]) -> Result<(String, Vec<u8>), SaslFailure> {
    let nul = message
        .iter()
        .position(|b| *b == 0)
        .ok_or(SaslFailure::MalformedRequest)?;
    let user = std::str::from_utf8(&message[..nul]).map_err(|_| SaslFailure::MalformedRequest)?;
    let proof = message[nul + 1..].to_vec();
    if user.is_empty() || proof.len() != 32 {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok((user.to_string(), proof))
}

/// Whether `proof` is the initiator's HMAC for `token` (in constant time).
pub fn verify(token: &str, proof: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token.as_bytes()) else {
        return false;
    };
    mac.update(b"Initiator");
    mac.verify_slice(proof).is_ok()
}

/// The server's answer (the success's additional data).
pub fn responder(token: &str) -> Vec<u8> {
    hmac(token.as_bytes(), b"Responder")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_made_with_the_token_verifies() {
        let proof = hmac(b"s3cret-token", b"Initiator");
        let mut msg = b"alice\0".to_vec();
        msg.extend_from_slice(&proof);
        let (user, p) = parse(&msg).expect("parses");
        assert_eq!(user, "alice");
        assert!(verify("s3cret-token", &p));
        assert!(!verify("another-token", &p));
        assert_ne!(responder("s3cret-token"), proof);
        assert_eq!(parse(b"alice"), Err(SaslFailure::MalformedRequest));
        assert_eq!(parse(b"\0xyz"), Err(SaslFailure::MalformedRequest));
    }
}
