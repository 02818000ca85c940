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

/// The streamed format: written a record at a time by a thread of its own
/// (`tracked.rs`) and read back a record at a time, so that neither end
/// holds the whole state. `STS2`, then records: `T` + u16 length + a tree
/// name, `P` + u32 length + key + u32 length + value (a pair of the last
/// named tree), `E` at the end.
pub mod stream {
    use std::io::{Read, Write};

    pub const MAGIC: &[u8; 4] = b"STS2";
    /// Longest key or value read back (sled's own limit is far above what
    /// Starling writes; this bounds what a corrupt file can allocate).
    const MAX_FIELD: usize = 256 << 20;

    pub fn tree(out: &mut dyn Write, name: &str) -> std::io::Result<()> {
        out.write_all(b"T")?;
        out.write_all(&(name.len() as u16).to_be_bytes())?;
        out.write_all(name.as_bytes())
    }

    pub fn pair(out: &mut dyn Write, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        out.write_all(b"P")?;
        out.write_all(&(key.len() as u32).to_be_bytes())?;
        out.write_all(key)?;
        out.write_all(&(value.len() as u32).to_be_bytes())?;
        out.write_all(value)
    }

    pub fn end(out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(b"E")
    }

    #[derive(Debug, PartialEq)]
    pub enum Record {
        Tree(String),
        Pair(Vec<u8>, Vec<u8>),
    }

    #[derive(Debug, thiserror::Error)]
    pub enum StreamError {
        #[error("not a streamed snapshot")]
        Magic,
        #[error("corrupt snapshot record: {0}")]
        Corrupt(&'static str),
        #[error("reading the snapshot: {0}")]
        Io(#[from] std::io::Error),
    }

    /// Reads records one at a time; `None` after the end record.
    pub struct Reader<'a> {
        input: &'a mut dyn Read,
        done: bool,
    }

    impl<'a> Reader<'a> {
        pub fn new(input: &'a mut dyn Read) -> Result<Reader<'a>, StreamError> {
            let mut magic = [0u8; 4];
            input.read_exact(&mut magic)?;
            if &magic != MAGIC {
                return Err(StreamError::Magic);
            }
            Ok(Reader { input, done: false })
        }

        fn field(&mut self, len: usize) -> Result<Vec<u8>, StreamError> {
            if len > MAX_FIELD {
                return Err(StreamError::Corrupt("field too long"));
            }
            let mut buf = vec![0u8; len];
            self.input.read_exact(&mut buf)?;
            Ok(buf)
        }

        fn u32(&mut self) -> Result<usize, StreamError> {
            let mut b = [0u8; 4];
            self.input.read_exact(&mut b)?;
            Ok(u32::from_be_bytes(b) as usize)
        }

        pub fn next_record(&mut self) -> Result<Option<Record>, StreamError> {
            if self.done {
                return Ok(None);
            }
            let mut tag = [0u8; 1];
            self.input.read_exact(&mut tag)?;
            match tag[0] {
                b'T' => {
                    let mut b = [0u8; 2];
                    self.input.read_exact(&mut b)?;
                    let name = self.field(u16::from_be_bytes(b) as usize)?;
                    let name = String::from_utf8(name)
                        .map_err(|_| StreamError::Corrupt("tree name is not UTF-8"))?;
                    Ok(Some(Record::Tree(name)))
                }
                b'P' => {
                    let kl = self.u32()?;
                    let k = self.field(kl)?;
                    let vl = self.u32()?;
                    let v = self.field(vl)?;
                    Ok(Some(Record::Pair(k, v)))
                }
                b'E' => {
                    self.done = true;
                    Ok(None)
                }
                _ => Err(StreamError::Corrupt("unknown record")),
            }
        }
    }
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
