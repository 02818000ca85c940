//! SASL PLAIN (RFC 4616), offered only on TLS-protected streams.

use super::SaslFailure;

/// A parsed PLAIN message: authzid, authcid, password.
pub struct PlainMessage {
    pub authzid: String,
    pub username: String,
    pub password: String,
}

pub fn parse(message: &[u8]) -> Result<PlainMessage, SaslFailure> {
    let text = std::str::from_utf8(message).map_err(|_| SaslFailure::MalformedRequest)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(username), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslFailure::MalformedRequest);
    };
    Ok(PlainMessage {
        authzid: authzid.to_string(),
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_rejects() {
        let m = super::parse(b"\0alice\0pw").unwrap();
        assert_eq!((m.username.as_str(), m.password.as_str()), ("alice", "pw"));
        assert!(super::parse(b"alice\0pw").is_err());
    }
}
