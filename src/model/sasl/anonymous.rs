//! SASL ANONYMOUS (RFC 4505) for the anonymous host (XEP-0175): the client
//! may send trace information, which is only checked and logged; the server
//! makes up a fresh local part for a temporary account.

use rand::distributions::Alphanumeric;
use rand::Rng;

use super::SaslFailure;

/// RFC 4505 §2: at most 255 UTF-8 characters of trace information.
const MAX_TRACE_CHARS: usize = 255;

/// Check the client's message (the trace), if it sent one.
pub fn parse_trace(message: Option<&[u8]>) -> Result<String, SaslFailure> {
    let Some(bytes) = message else {
        return Ok(String::new());
    };
    let trace = std::str::from_utf8(bytes).map_err(|_| SaslFailure::MalformedRequest)?;
    if trace.chars().count() > MAX_TRACE_CHARS || trace.contains('\0') {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok(trace.to_string())
}

/// A fresh local part: 16 characters of [a-z0-9], about 82 bits.
pub fn new_local_part() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(16)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_is_optional_bounded_and_text() {
        assert_eq!(parse_trace(None), Ok(String::new()));
        assert_eq!(parse_trace(Some(b"sirhc")), Ok("sirhc".into()));
        assert_eq!(
            parse_trace(Some(&[0xff, 0xfe])),
            Err(SaslFailure::MalformedRequest)
        );
        assert_eq!(
            parse_trace(Some("x".repeat(256).as_bytes())),
            Err(SaslFailure::MalformedRequest)
        );
    }

    #[test]
    fn local_parts_are_fresh_and_valid() {
        let a = new_local_part();
        assert_eq!(a.len(), 16);
        assert_ne!(a, new_local_part());
        assert!(jid::BareJid::new(&format!("{a}@anon.example")).is_ok());
    }
}
