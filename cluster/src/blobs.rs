//! Application files on the mesh (Starling's HTTP uploads): a node streams
//! a file to a peer (`PutBlob`, answered once it is whole and on disk
//! there) or from one (`GetBlob`). Files live flat in the node's blob
//! directory, named by the application; nothing here holds a file in
//! memory: chunks of at most [`CHUNK`] bytes pass through bounded queues.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Status as RpcStatus;

use crate::proto::BlobChunk;

/// The largest chunk sent.
pub const CHUNK: usize = 256 * 1024;

/// A name the blob directory accepts: no paths, nothing hidden.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where blob `name` lives under `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A partial file, removed unless kept.
struct Part(Option<PathBuf>);

impl Drop for Part {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Receive a file: written under a name of its own, synced, then renamed.
pub async fn receive(
    dir: &Path,
    mut chunks: tonic::Streaming<BlobChunk>,
    check_from: impl Fn(u64) -> Result<(), RpcStatus>,
) -> Result<(), RpcStatus> {
    let internal = |e: std::io::Error| RpcStatus::internal(e.to_string());
    let mut file: Option<(tokio::fs::File, String, u64, Part)> = None;
    let mut written = 0u64;
    while let Some(c) = chunks.message().await? {
        check_from(c.from)?;
        if !valid_name(&c.name) {
            return Err(RpcStatus::invalid_argument("bad blob name"));
        }
        let (mut f, name, size, part) = match file.take() {
            Some(open) => open,
            None => {
                tokio::fs::create_dir_all(dir).await.map_err(internal)?;
                let p = dir.join(format!(".{}.{:016x}.part", c.name, rand::random::<u64>()));
                let f = tokio::fs::File::create(&p).await.map_err(internal)?;
                (f, c.name.clone(), c.size, Part(Some(p)))
            }
        };
        if c.name != name || c.size != size || written + c.data.len() as u64 > size {
            return Err(RpcStatus::invalid_argument("blob chunks do not add up"));
        }
        written += c.data.len() as u64;
        f.write_all(&c.data).await.map_err(internal)?;
        file = Some((f, name, size, part));
    }
    let Some((f, name, size, mut part)) = file else {
        return Err(RpcStatus::invalid_argument("an empty blob"));
    };
    if written != size {
        return Err(RpcStatus::invalid_argument("blob cut short"));
    }
    f.sync_all().await.map_err(internal)?;
    drop(f);
    let Some(p) = part.0.take() else {
        return Err(RpcStatus::internal("lost the part file"));
    };
    tokio::fs::rename(&p, path(dir, &name))
        .await
        .map_err(internal)?;
    Ok(())
}

/// Stream file `name` from `dir` in chunks; `None` if there is none.
pub async fn send(
    dir: &Path,
    name: &str,
    from: u64,
) -> Result<mpsc::Receiver<Result<BlobChunk, RpcStatus>>, RpcStatus> {
    if !valid_name(name) {
        return Err(RpcStatus::invalid_argument("bad blob name"));
    }
    let mut f = match tokio::fs::File::open(path(dir, name)).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RpcStatus::not_found("no such blob here"))
        }
        Err(e) => return Err(RpcStatus::internal(e.to_string())),
    };
    let size = f
        .metadata()
        .await
        .map_err(|e| RpcStatus::internal(e.to_string()))?
        .len();
    let (tx, rx) = mpsc::channel(4);
    let name = name.to_string();
    tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let mut data = vec![0u8; CHUNK];
            let n = match f.read(&mut data).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Err(RpcStatus::internal(e.to_string()))).await;
                    return;
                }
            };
            if n == 0 && sent > 0 {
                return;
            }
            data.truncate(n);
            sent += n as u64;
            let chunk = BlobChunk {
                from,
                name: name.clone(),
                size,
                data,
            };
            if tx.send(Ok(chunk)).await.is_err() || n == 0 {
                return;
            }
        }
    });
    Ok(rx)
}
