//! HTTP uploads (XEP-0363) as replicated state: which files exist, whose
//! they are (for quotas) and which nodes hold them (for downloads through
//! any node). The files themselves are not here: they live on the nodes'
//! disks (`upload/`), streamed between nodes over the mesh.

use serde::{Deserialize, Serialize};

use super::tracked::Tracked;
use super::StateError;

/// One stored upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The uploading account (bare JID).
    pub owner: String,
    pub size: u64,
    pub content_type: String,
    pub filename: String,
    /// Unix ms.
    pub created_ms: u64,
    /// The nodes that have the file on disk.
    pub holders: Vec<u64>,
}

fn record_key(id: &str) -> Vec<u8> {
    format!("\0upload\0{id}").into_bytes()
}

fn owner_prefix(owner: &str) -> Vec<u8> {
    format!("\0upload-by\0{owner}\0").into_bytes()
}

/// Record a stored file; false if the id is taken already.
pub fn store(t: &Tracked, id: &str, r: &UploadRecord) -> Result<bool, StateError> {
    if t.get(record_key(id))?.is_some() {
        return Ok(false);
    }
    t.insert(record_key(id), serde_json::to_vec(r)?)?;
    let mut k = owner_prefix(&r.owner);
    k.extend_from_slice(id.as_bytes());
    t.insert(k, r.size.to_be_bytes().to_vec())?;
    Ok(true)
}

/// Forget the files created before `before_ms`: their ids.
pub fn expire(t: &Tracked, before_ms: u64) -> Result<Vec<String>, StateError> {
    let mut gone = Vec::new();
    for kv in t.scan_prefix(b"\0upload\0") {
        let (k, v) = kv?;
        let r: UploadRecord = serde_json::from_slice(&v)?;
        if r.created_ms < before_ms {
            let id = String::from_utf8_lossy(&k[b"\0upload\0".len()..]).into_owned();
            t.remove(&k)?;
            let mut ok = owner_prefix(&r.owner);
            ok.extend_from_slice(id.as_bytes());
            t.remove(ok)?;
            gone.push(id);
        }
    }
    Ok(gone)
}

pub fn get(t: &Tracked, id: &str) -> Result<Option<UploadRecord>, StateError> {
    Ok(match t.get(record_key(id))? {
        Some(v) => Some(serde_json::from_slice(&v)?),
        None => None,
    })
}

/// Bytes `owner`'s stored files take.
pub fn usage(t: &Tracked, owner: &str) -> Result<u64, StateError> {
    let mut sum = 0u64;
    for kv in t.scan_prefix(owner_prefix(owner)) {
        let (_, v) = kv?;
        let b: [u8; 8] = v.as_ref().try_into().unwrap_or([0; 8]);
        sum = sum.saturating_add(u64::from_be_bytes(b));
    }
    Ok(sum)
}
