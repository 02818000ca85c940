//! Raft snapshots as files, built off the driver thread and sent in chunks.
//!
//! raft-rs asks its storage for a snapshot when a follower is too far
//! behind for the log (a new node, one that was down for long). Holding the
//! whole state in one message does not scale: the state machine's data
//! (message archives) reaches gigabytes. So:
//!
//! 1. The driver fixes the snapshot at the applied index (the state machine
//!    starts recording what changes after it, [`StateMachine::snapshot_job`])
//!    and a thread of its own writes the file; raft-rs hears "temporarily
//!    unavailable" until it is done and asks again.
//! 2. The snapshot raft-rs sends then holds only a reference to the file
//!    ([`Reference`]); the transport streams the file to the follower in
//!    chunks (`InstallSnapshot`) before it hands over the Raft message.
//! 3. The follower reads the file back a record at a time when raft-rs
//!    tells it to install the snapshot.
//!
//! The log is not compacted past a snapshot being built or offered, so a
//! snapshot is never stale by the time it is ready. File layout: `MAGIC`,
//! the index (u64), the members (u32 length + JSON), the deduplication
//! window (u32 length + JSON), then whatever the state machine wrote.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::prelude::ConfState;

use crate::StateMachine;

const MAGIC: &[u8; 8] = b"STRAFT1\n";
/// What a snapshot message carries instead of the state: this, then the
/// file's size (u64).
const REFERENCE: &[u8; 8] = b"STREF1\0\0";
/// How long a built snapshot is kept on offer (and compaction held back
/// until every follower has what it holds): longer than sending and
/// installing a few GiB takes.
const OFFER: Duration = Duration::from_secs(900);
/// After a failed build, how long before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How much of a snapshot goes in one chunk on the mesh.
pub const CHUNK: usize = 1 << 20;

/// A snapshot message's data, when the state travels as a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reference {
    pub size: u64,
}

impl Reference {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = REFERENCE.to_vec();
        v.extend_from_slice(&self.size.to_be_bytes());
        v
    }

    pub fn decode(data: &[u8]) -> Option<Reference> {
        let rest = data.strip_prefix(REFERENCE.as_slice())?;
        let size = u64::from_be_bytes(rest.try_into().ok()?);
        Some(Reference { size })
    }
}

/// The file of the snapshot this node built at `index`.
pub fn outgoing(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("out-{index:020}.snap"))
}

/// The file of the snapshot at `index` received from the leader.
pub fn incoming(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("in-{index:020}.snap"))
}

/// Remove the files in `dir` whose names `unwanted` picks.
fn remove_where(dir: &Path, unwanted: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(&unwanted)
        {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Remove this node's files of one kind (`out-` or `in-`) except `keep`.
pub fn remove_others(dir: &Path, prefix: &str, keep: Option<&Path>) {
    let keep = keep.and_then(|k| k.file_name()).and_then(|n| n.to_str());
    remove_where(dir, |n| n.starts_with(prefix) && Some(n) != keep);
}

/// Remove received snapshot files (complete or partial) for indexes
/// below `index`.
pub fn remove_older(dir: &Path, index: u64) {
    remove_where(dir, |n| {
        n.strip_prefix("in-")
            .and_then(|n| n.get(..20))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|i| i < index)
    });
}

/// What the cluster layer puts before the state machine's data.
pub struct Header {
    pub index: u64,
    pub peers: Vec<u8>,
    pub dedup: Vec<u8>,
}

fn write_header(out: &mut dyn Write, h: &Header) -> std::io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&h.index.to_be_bytes())?;
    out.write_all(&(h.peers.len() as u32).to_be_bytes())?;
    out.write_all(&h.peers)?;
    out.write_all(&(h.dedup.len() as u32).to_be_bytes())?;
    out.write_all(&h.dedup)
}

/// Open a received snapshot file: its header, then a reader positioned at
/// the state machine's data.
pub fn open(path: &Path) -> Result<(Header, BufReader<std::fs::File>), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = BufReader::with_capacity(CHUNK, f);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|e| e.to_string())?;
    if &magic != MAGIC {
        return Err("not a snapshot file".into());
    }
    let mut b8 = [0u8; 8];
    r.read_exact(&mut b8).map_err(|e| e.to_string())?;
    let index = u64::from_be_bytes(b8);
    let field = |r: &mut BufReader<std::fs::File>| -> Result<Vec<u8>, String> {
        let mut b4 = [0u8; 4];
        r.read_exact(&mut b4).map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes(b4) as usize;
        if len > 256 << 20 {
            return Err("snapshot header field too long".into());
        }
        let mut v = vec![0u8; len];
        r.read_exact(&mut v).map_err(|e| e.to_string())?;
        Ok(v)
    };
    let peers = field(&mut r)?;
    let dedup = field(&mut r)?;
    Ok((
        Header {
            index,
            peers,
            dedup,
        },
        r,
    ))
}

/// The snapshot on offer to followers, or being built.
#[derive(Default)]
pub struct Outgoing {
    state: Mutex<Offer>,
}

#[derive(Default)]
enum Offer {
    #[default]
    None,
    Building {
        index: u64,
        term: u64,
        conf: ConfState,
        done: Arc<Mutex<Option<Result<u64, String>>>>,
    },
    Ready {
        index: u64,
        term: u64,
        conf: ConfState,
        size: u64,
        since: Instant,
        /// A follower has it: compaction need not wait any longer.
        delivered: bool,
    },
    Failed {
        at: Instant,
    },
}

/// A built snapshot: what raft-rs needs to send it.
pub struct Built {
    pub index: u64,
    pub term: u64,
    pub conf: ConfState,
    pub size: u64,
}

/// What the driver knows when raft-rs asks for a snapshot.
pub struct Request<'a> {
    pub applied: u64,
    pub term: u64,
    pub conf: ConfState,
    pub header: Header,
    pub sm: &'a Arc<dyn StateMachine>,
}

impl Outgoing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Offer> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A finished build becomes an offer (or a failure).
    fn settle(g: &mut Offer) {
        let Offer::Building {
            index,
            term,
            conf,
            done,
        } = &*g
        else {
            return;
        };
        let finished = done.lock().unwrap_or_else(|e| e.into_inner()).take();
        match finished {
            None => {}
            Some(Ok(size)) => {
                *g = Offer::Ready {
                    index: *index,
                    term: *term,
                    conf: conf.clone(),
                    size,
                    since: Instant::now(),
                    delivered: false,
                }
            }
            Some(Err(e)) => {
                tracing::error!(index, error = %e, "building a snapshot failed");
                *g = Offer::Failed { at: Instant::now() };
            }
        }
    }

    /// The index compaction must not pass (a snapshot being built or on
    /// offer needs the entries after it).
    pub fn hold(&self) -> Option<u64> {
        let mut g = self.lock();
        Self::settle(&mut g);
        match &*g {
            Offer::Building { index, .. } => Some(*index),
            Offer::Ready {
                index,
                since,
                delivered: false,
                ..
            } if since.elapsed() < OFFER => Some(*index),
            _ => None,
        }
    }

    /// Every follower is past the snapshot on offer: compaction may go on.
    pub fn delivered(&self) {
        if let Offer::Ready { delivered, .. } = &mut *self.lock() {
            *delivered = true;
        }
    }

    /// A snapshot to send, if one is ready and still usable; otherwise
    /// starts building one (when none is under way) and answers `None`.
    /// `header` is only built when a build starts.
    /// `first_needed`: the oldest index whose entries the log still holds;
    /// `members`: the membership now (a snapshot from before a member
    /// joined cannot be installed by it).
    pub fn get<'a>(
        &self,
        dir: &Path,
        request_index: u64,
        first_needed: u64,
        members: &ConfState,
        req: impl FnOnce() -> Result<Request<'a>, String>,
    ) -> Option<Built> {
        let mut g = self.lock();
        Self::settle(&mut g);
        if matches!(&*g, Offer::Building { .. }) {
            return None;
        }
        if let Offer::Failed { at } = &*g {
            if at.elapsed() < RETRY_AFTER {
                return None;
            }
        }
        if let Offer::Ready {
            index,
            term,
            conf,
            size,
            since,
            ..
        } = &*g
        {
            let usable = *index >= request_index
                && *index + 1 >= first_needed
                && conf == members
                && since.elapsed() < OFFER
                && outgoing(dir, *index).exists();
            if usable {
                return Some(Built {
                    index: *index,
                    term: *term,
                    conf: conf.clone(),
                    size: *size,
                });
            }
        }
        let req = match req() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a snapshot");
                *g = Offer::Failed { at: Instant::now() };
                return None;
            }
        };
        // Build one at the applied index.
        let job = match req.sm.snapshot_job() {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a snapshot");
                *g = Offer::Failed { at: Instant::now() };
                return None;
            }
        };
        let done = Arc::new(Mutex::new(None));
        let (dir, index, header) = (dir.to_path_buf(), req.applied, req.header);
        let report = done.clone();
        let spawned = std::thread::Builder::new()
            .name("raft-snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                let r = build(&dir, &header, job);
                match &r {
                    Ok(size) => tracing::info!(
                        index,
                        bytes = size,
                        secs = started.elapsed().as_secs_f64(),
                        "snapshot built"
                    ),
                    Err(e) => tracing::warn!(index, error = %e, "snapshot not built"),
                }
                *report.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the snapshot thread");
            *g = Offer::Failed { at: Instant::now() };
            return None;
        }
        tracing::info!(index, "building a snapshot");
        *g = Offer::Building {
            index,
            term: req.term,
            conf: req.conf,
            done,
        };
        None
    }
}

/// Write the snapshot file (under a temporary name, renamed when complete
/// and on disk) and answer its size.
fn build(dir: &Path, header: &Header, job: crate::SnapshotJob) -> Result<u64, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = outgoing(dir, header.index);
    let part = path.with_extension("part");
    let f = std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
    let mut w = BufWriter::with_capacity(CHUNK, f);
    write_header(&mut w, header).map_err(|e| e.to_string())?;
    job(&mut w)?;
    let f = w.into_inner().map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    std::fs::rename(&part, &path).map_err(|e| e.to_string())?;
    remove_others(dir, "out-", Some(&path));
    Ok(size)
}
