//! The replicated state as one byte string, for Raft snapshots: the leader
//! sends it to a follower too far behind to catch up from the log.
//!
//! Protocol Buffers (prost) with raw byte fields: a record costs its own
//! size plus a few bytes. The first format, JSON with every byte written as
//! a number, was four to five times larger and slow to build; 50,000
//! accounts no longer fit the mesh's 64 MiB message limit. Snapshots in the
//! old format are still read, so nodes can be upgraded one at a time.

use prost::Message;

/// Starts every snapshot in this format (a JSON snapshot starts with `[`).
const MAGIC: &[u8; 4] = b"STS1";

#[derive(Clone, PartialEq, prost::Message)]
struct Pair {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Tree {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    pairs: Vec<Pair>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dump {
    #[prost(message, repeated, tag = "1")]
    trees: Vec<Tree>,
}

/// Trees by name, each with its key/value pairs in key order.
pub type Trees = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("snapshot (JSON) does not decode: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn encode(trees: Trees) -> Vec<u8> {
    let dump = Dump {
        trees: trees
            .into_iter()
            .map(|(name, kvs)| Tree {
                name,
                pairs: kvs
                    .into_iter()
                    .map(|(key, value)| Pair { key, value })
                    .collect(),
            })
            .collect(),
    };
    let mut out = Vec::with_capacity(MAGIC.len() + dump.encoded_len());
    out.extend_from_slice(MAGIC);
    dump.encode(&mut out)
        .expect("a Vec grows to fit what is encoded");
    out
}

pub fn decode(data: &[u8]) -> Result<Trees, SnapshotError> {
    let Some(body) = data.strip_prefix(MAGIC.as_slice()) else {
        return Ok(serde_json::from_slice(data)?);
    };
    let dump = Dump::decode(body)?;
    Ok(dump
        .trees
        .into_iter()
        .map(|t| {
            (
                t.name,
                t.pairs.into_iter().map(|p| (p.key, p.value)).collect(),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trees {
        vec![
            (
                "accounts".into(),
                vec![(b"alice".to_vec(), vec![0, 1, 255, 7])],
            ),
            ("sessions".into(), vec![]),
        ]
    }

    #[test]
    fn round_trip_and_reads_the_json_format() {
        let bin = encode(sample());
        assert!(bin.starts_with(MAGIC));
        assert_eq!(decode(&bin).expect("decodes"), sample());
        let json = serde_json::to_vec(&sample()).expect("json");
        assert!(json.len() > bin.len());
        assert_eq!(decode(&json).expect("old format decodes"), sample());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"STS1\xff\xff\xff").is_err());
        assert!(decode(b"not a snapshot").is_err());
        assert!(decode(b"").is_err());
    }
}
