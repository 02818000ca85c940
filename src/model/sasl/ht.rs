//! The HT-SHA-256 mechanisms (draft-schmaus-kitten-sasl-ht) FAST
//! (XEP-0484) uses: the client proves it holds a token with
//! HMAC-SHA-256(token, "Initiator" || cb-data), the server answers with
//! HMAC-SHA-256(token, "Responder" || cb-data). The suffix names the
//! channel binding (draft §4): -NONE none, -EXPR tls-exporter (RFC 9266),
//! -ENDP tls-server-end-point (RFC 5929 §4), so a token stolen from one
//! TLS session is of no use through another server's (or a proxy's).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SaslFailure;

pub const MECHANISM: &str = "HT-SHA-256-NONE";
pub const EXPR: &str = "HT-SHA-256-EXPR";
pub const ENDP: &str = "HT-SHA-256-ENDP";

/// Whether `mechanism` is one of the HT-SHA-256 family.
pub fn is_ht(mechanism: &str) -> bool {
    [MECHANISM, EXPR, ENDP].contains(&mechanism)
}

/// The channel-binding data `mechanism` signs on this stream: empty for
/// -NONE; `None` when the stream cannot give what it needs.
pub fn cb_data<'a>(
    mechanism: &str,
    exporter: Option<&'a [u8]>,
    end_point: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    match mechanism {
        MECHANISM => Some(&[]),
        EXPR => exporter,
        ENDP => end_point,
        _ => None,
    }
}

fn hmac(token: &[u8], what: &[u8], cb: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token) else {
        return Vec::new();
    };
    mac.update(what);
    mac.update(cb);
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

/// Whether `proof` is the initiator's HMAC for `token` and the channel
/// binding `cb` (in constant time).
pub fn verify(token: &str, proof: &[u8], cb: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(token.as_bytes()) else {
        return false;
    };
    mac.update(b"Initiator");
    mac.update(cb);
    mac.verify_slice(proof).is_ok()
}

/// The server's answer (the success's additional data).
pub fn responder(token: &str, cb: &[u8]) -> Vec<u8> {
    hmac(token.as_bytes(), b"Responder", cb)
}

/// tls-server-end-point data (RFC 5929 §4.1) for a certificate (DER): its
/// hash with the hash function of its signature algorithm, SHA-256 for
/// MD5 and SHA-1. `None` for algorithms RFC 5929 does not define (EdDSA)
/// or a certificate that does not parse.
pub fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha384, Sha512};
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, .. }
    let (outer, _) = der_item(cert, 0x30)?;
    let (_, rest) = der_any(outer)?;
    let (alg, _) = der_item(rest, 0x30)?;
    let (oid, _) = der_item(alg, 0x06)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let bits = match oid {
        // md5, sha1, sha256 WithRSAEncryption; ecdsa-with-SHA1, -SHA256
        [r @ .., 0x04 | 0x05 | 0x0b] if r == RSA => 256,
        [e @ .., 0x01] if e == ECDSA => 256,
        [e @ .., 0x03, 0x02] if e == ECDSA => 256,
        [r @ .., 0x0c] if r == RSA => 384,
        [e @ .., 0x03, 0x03] if e == ECDSA => 384,
        [r @ .., 0x0d] if r == RSA => 512,
        [e @ .., 0x03, 0x04] if e == ECDSA => 512,
        _ => return None,
    };
    Some(match bits {
        256 => Sha256::digest(cert).to_vec(),
        384 => Sha384::digest(cert).to_vec(),
        _ => Sha512::digest(cert).to_vec(),
    })
}

/// One DER element of type `tag` at the start of `data`: its contents and
/// what follows it.
fn der_item(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *data.first()? != tag {
        return None;
    }
    der_any(data)
}

/// One DER element of any type: its contents and what follows it.
fn der_any(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let first = *data.get(1)?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let len = data
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((data.get(head..end)?, data.get(end..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_made_with_the_token_verifies() {
        let proof = hmac(b"s3cret-token", b"Initiator", b"");
        let mut msg = b"alice\0".to_vec();
        msg.extend_from_slice(&proof);
        let (user, p) = parse(&msg).expect("parses");
        assert_eq!(user, "alice");
        assert!(verify("s3cret-token", &p, b""));
        assert!(!verify("another-token", &p, b""));
        assert!(!verify("s3cret-token", &p, b"some channel"));
        assert_ne!(responder("s3cret-token", b""), proof);
        assert_eq!(parse(b"alice"), Err(SaslFailure::MalformedRequest));
        assert_eq!(parse(b"\0xyz"), Err(SaslFailure::MalformedRequest));
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = cert.der().to_vec();
        use sha2::Digest;
        assert_eq!(end_point_hash(&der), Some(Sha256::digest(&der).to_vec()));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        assert_eq!(end_point_hash(cert.der()).map(|h| h.len()), Some(48));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        assert_eq!(end_point_hash(cert.der()), None);
        assert_eq!(end_point_hash(b"\x30\x85garbage"), None);
        assert_eq!(end_point_hash(b""), None);
    }
}
