//! JIDs as text (RFC 7622 §3.1): the parts read from a JID string without
//! parsing it, where the string is already a JID the server made.

/// The bare part of a JID's text: all before the first '/' (a node or
/// domain holds no '/'), or the whole text when it has no resource.
pub fn bare(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(bare, _)| bare)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bare_part_ends_at_the_first_slash() {
        assert_eq!(super::bare("a@b/c/d"), "a@b");
        assert_eq!(super::bare("b/c"), "b");
        assert_eq!(super::bare("a@b"), "a@b");
    }
}
