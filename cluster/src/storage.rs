//! Raft log, hard state and snapshot position in sled (raft-rs `Storage`).
//!
//! Storage errors leave a node unusable, so they are fatal and loud:
//! callers treat any error from the write side as a reason to stop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::StateMachine;

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const SNAPSHOT_META: &[u8] = b"snapshot_meta";
const PEERS: &[u8] = b"peers";
const APPLIED: &[u8] = b"applied";
/// The index of the first batch entry applied here (absent: none yet).
const BATCHED_SINCE: &[u8] = b"batched_since";
/// The dedup dump's record of [`BATCHED_SINCE`] (its "index" is not eight
/// bytes long, so it is never taken for a proposal's).
const BATCHED_RECORD: &[u8] = b"batched_since";
/// Set while a snapshot is being installed (its index).
const RESTORING: &[u8] = b"restoring_snapshot";
/// The dedup window as (applied index, proposal id, result) triples.
type DedupDump = Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>;

/// [`SledStorage::last`] not known: the tree says.
const UNKNOWN: u64 = u64::MAX;

/// How many applied proposals are remembered for deduplication.
const DEDUP_WINDOW: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt raft record: {0}")]
    Corrupt(String),
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn to_raft(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// Recent entries kept in memory ([`SledStorage::append`]).
const RECENT_ENTRIES: usize = 1024;
const RECENT_BYTES: usize = 8 << 20;

#[derive(Default)]
struct Recent {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Recent {
    fn get(&self, idx: u64) -> Option<&Entry> {
        let first = self.entries.front()?.index;
        let e = self
            .entries
            .get(usize::try_from(idx.checked_sub(first)?).ok()?)?;
        (e.index == idx).then_some(e)
    }
}

/// The log lives in `raft_log` (big-endian index -> Entry); the rest in `raft_meta`.
#[derive(Clone)]
pub struct SledStorage {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// Recently applied proposal ids and their results (deduplication).
    dedup: sled::Tree,
    /// Applied index -> proposal id, to expire the dedup window in order.
    dedup_order: sled::Tree,
    sm: Arc<dyn StateMachine>,
    /// Index and term of the last entry folded into a snapshot (0 if none).
    snap_index: Arc<AtomicU64>,
    snap_term: Arc<AtomicU64>,
    /// The last index applied to the state machine.
    applied: Arc<AtomicU64>,
    /// The last index in the log ([`UNKNOWN`]: read it from the tree):
    /// raft-rs asks for it several times a round, and the tree answers
    /// only by walking to its end.
    last: Arc<AtomicU64>,
    /// The index of the first batch entry in the log (0: none yet): from
    /// it on, every command is applied under `index << 16 | position`
    /// (see `batch::sequence`). Kept with the log and in snapshots.
    batched_since: Arc<AtomicU64>,
    /// The last entries appended, in order and without gaps (their data
    /// shared, not copied), at most [`RECENT_ENTRIES`] and about
    /// [`RECENT_BYTES`]: raft-rs asks for the terms of recent entries every
    /// round, and reads committed ones back to apply them; from the tree
    /// each is a lookup and a decode.
    recent: Arc<Mutex<Recent>>,
    /// Snapshot files: built here, received from the leader.
    snapshot_dir: Arc<std::path::PathBuf>,
    outgoing: Arc<crate::snapshots::Outgoing>,
}

/// The members recorded in a node's database, read without starting the
/// node (and without creating anything in a database that has none).
pub fn stored_peers(db: &sled::Db) -> Result<Vec<(u64, String)>, StoreError> {
    if !db.tree_names().iter().any(|n| n.as_ref() == b"raft_meta") {
        return Ok(Vec::new());
    }
    match db.open_tree("raft_meta")?.get(PEERS)? {
        Some(b) => serde_json::from_slice(&b).map_err(corrupt),
        None => Ok(Vec::new()),
    }
}

impl SledStorage {
    pub fn open(
        db: sled::Db,
        sm: Arc<dyn StateMachine>,
        snapshot_dir: std::path::PathBuf,
    ) -> Result<Self, StoreError> {
        let log = db.open_tree("raft_log")?;
        let meta = db.open_tree("raft_meta")?;
        let dedup = db.open_tree("raft_dedup")?;
        let dedup_order = db.open_tree("raft_dedup_order")?;
        let (si, st) = match meta.get(SNAPSHOT_META)? {
            Some(b) => {
                let m = SnapshotMetadata::parse_from_bytes(&b).map_err(corrupt)?;
                (m.index, m.term)
            }
            None => (0, 0),
        };
        if let Some(i) = meta.get(RESTORING)? {
            let index = i.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            return Err(StoreError::Corrupt(format!(
                "this node stopped while installing the snapshot at index {index}: its state is \
                 incomplete; remove its data directory and let it join again"
            )));
        }
        let applied = match meta.get(APPLIED)? {
            Some(b) => u64::from_be_bytes(b.as_ref().try_into().map_err(corrupt)?),
            None => si,
        };
        let batched_since = match meta.get(BATCHED_SINCE)? {
            Some(b) => u64::from_be_bytes(b.as_ref().try_into().map_err(corrupt)?),
            None => 0,
        };
        Ok(SledStorage {
            db,
            log,
            meta,
            dedup,
            dedup_order,
            sm,
            snap_index: Arc::new(AtomicU64::new(si)),
            snap_term: Arc::new(AtomicU64::new(st)),
            applied: Arc::new(AtomicU64::new(applied)),
            last: Arc::new(AtomicU64::new(UNKNOWN)),
            batched_since: Arc::new(AtomicU64::new(batched_since)),
            recent: Arc::default(),
            snapshot_dir: Arc::new(snapshot_dir),
            outgoing: Arc::default(),
        })
    }

    /// Whether this store has ever been part of a cluster.
    pub fn is_initialized(&self) -> Result<bool, StoreError> {
        Ok(self.meta.contains_key(CONF_STATE)? || self.snap_index.load(Ordering::Acquire) > 0)
    }

    /// Make a brand-new single-member cluster. As in raft-rs's examples,
    /// the first state is a snapshot at index 1 holding the conf state, so
    /// nodes that join later get the membership by snapshot.
    pub fn bootstrap(&self, id: u64) -> Result<(), StoreError> {
        let mut cs = ConfState::default();
        cs.voters = vec![id];
        self.set_conf_state(&cs)?;
        let mut m = SnapshotMetadata::default();
        m.index = 1;
        m.term = 1;
        m.set_conf_state(cs);
        self.meta
            .insert(SNAPSHOT_META, m.write_to_bytes().map_err(corrupt)?)?;
        self.snap_index.store(1, Ordering::Release);
        self.snap_term.store(1, Ordering::Release);
        self.last.store(UNKNOWN, Ordering::Release);
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = 1;
        self.set_hard_state(&hs)?;
        self.set_applied(1)?;
        self.flush()
    }

    pub fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        // A new entry at index i replaces i and everything after it.
        self.forget_from(first.index);
        let last = self.last_index_inner()?;
        for idx in first.index..=last {
            self.log.remove(idx.to_be_bytes())?;
        }
        // Unknown while the tree changes: an error part-way leaves it so.
        self.last.store(UNKNOWN, Ordering::Release);
        for e in entries {
            self.log
                .insert(e.index.to_be_bytes(), e.write_to_bytes().map_err(corrupt)?)?;
        }
        if let Some(e) = entries.last() {
            self.last.store(e.index, Ordering::Release);
        }
        let mut recent = self.recent();
        if recent
            .entries
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            *recent = Recent::default();
        }
        for e in entries {
            recent.bytes += e.data.len() + e.context.len();
            recent.entries.push_back(e.clone());
        }
        while recent.entries.len() > RECENT_ENTRIES || recent.bytes > RECENT_BYTES {
            let Some(e) = recent.entries.pop_front() else {
                break;
            };
            recent.bytes -= e.data.len() + e.context.len();
        }
        Ok(())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop the remembered entries from `index` on (about to be replaced,
    /// or gone).
    fn forget_from(&self, index: u64) {
        let mut recent = self.recent();
        while recent.entries.back().is_some_and(|e| e.index >= index) {
            if let Some(e) = recent.entries.pop_back() {
                recent.bytes -= e.data.len() + e.context.len();
            }
        }
    }

    /// The remembered term of the entry at `idx`, if it is one of the last
    /// appended.
    fn remembered_term(&self, idx: u64) -> Option<u64> {
        self.recent().get(idx).map(|e| e.term)
    }

    /// The entries `low..high` if all are remembered, as
    /// [`raft::Storage::entries`] gives them (at least one; cut where the
    /// size passes `max`).
    fn remembered_entries(&self, low: u64, high: u64, max: u64) -> Option<Vec<Entry>> {
        let recent = self.recent();
        recent.get(low)?;
        recent.get(high.checked_sub(1)?)?;
        let mut out = Vec::new();
        let mut size = 0u64;
        for idx in low..high {
            let e = recent.get(idx)?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    pub fn set_hard_state(&self, hs: &HardState) -> Result<(), StoreError> {
        self.meta
            .insert(HARD_STATE, hs.write_to_bytes().map_err(corrupt)?)?;
        Ok(())
    }

    pub fn hard_state(&self) -> Result<HardState, StoreError> {
        match self.meta.get(HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(corrupt),
            None => Ok(HardState::default()),
        }
    }

    pub fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.hard_state()?;
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        self.meta
            .insert(CONF_STATE, cs.write_to_bytes().map_err(corrupt)?)?;
        Ok(())
    }

    fn conf_state(&self) -> Result<ConfState, StoreError> {
        match self.meta.get(CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(corrupt),
            None => Ok(ConfState::default()),
        }
    }

    pub fn dedup_get(&self, id: u128) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.dedup.get(id.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// Remember `id`'s result; forget the one applied `DEDUP_WINDOW` ago.
    pub fn dedup_put(&self, index: u64, id: u128, result: &[u8]) -> Result<(), StoreError> {
        self.dedup.insert(id.to_be_bytes(), result)?;
        self.dedup_order
            .insert(index.to_be_bytes(), &id.to_be_bytes())?;
        if index > DEDUP_WINDOW {
            let old = (index - DEDUP_WINDOW).to_be_bytes();
            if let Some(old_id) = self.dedup_order.remove(old)? {
                self.dedup.remove(old_id)?;
            }
        }
        Ok(())
    }

    /// The first batch entry's index (0: none yet).
    pub fn batched_since(&self) -> u64 {
        self.batched_since.load(Ordering::Acquire)
    }

    /// The entry at `index` is the first batch entry: recorded with the
    /// applied state (flushed with it).
    pub fn set_batched_since(&self, index: u64) -> Result<(), StoreError> {
        self.meta.insert(BATCHED_SINCE, &index.to_be_bytes())?;
        self.batched_since.store(index, Ordering::Release);
        Ok(())
    }

    fn dedup_dump(&self) -> Result<DedupDump, StoreError> {
        let mut out = Vec::new();
        // Only once there are batches: a node of an older version (which
        // would take this record for a proposal) is refused by then.
        let since = self.batched_since();
        if since != 0 {
            out.push((
                BATCHED_RECORD.to_vec(),
                Vec::new(),
                since.to_be_bytes().to_vec(),
            ));
        }
        for kv in self.dedup_order.iter() {
            let (index, id) = kv?;
            let result = self.dedup.get(&id)?.map(|v| v.to_vec()).unwrap_or_default();
            out.push((index.to_vec(), id.to_vec(), result));
        }
        Ok(out)
    }

    fn dedup_restore(&self, dump: DedupDump) -> Result<(), StoreError> {
        self.dedup.clear()?;
        self.dedup_order.clear()?;
        let mut since = 0;
        for (index, id, result) in dump {
            if index == BATCHED_RECORD {
                since = u64::from_be_bytes(result.as_slice().try_into().map_err(corrupt)?);
                continue;
            }
            self.dedup_order.insert(index, id.clone())?;
            self.dedup.insert(id, result)?;
        }
        // The snapshot's word replaces this node's: no record, no batch
        // entry up to its index.
        if since == 0 {
            self.meta.remove(BATCHED_SINCE)?;
            self.batched_since.store(0, Ordering::Release);
        } else {
            self.set_batched_since(since)?;
        }
        Ok(())
    }

    pub fn state_machine(&self) -> &Arc<dyn StateMachine> {
        &self.sm
    }

    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub fn set_applied(&self, index: u64) -> Result<(), StoreError> {
        self.meta.insert(APPLIED, &index.to_be_bytes())?;
        self.applied.store(index, Ordering::Release);
        Ok(())
    }

    /// Peer addresses (id -> "host:port"), kept with the log.
    pub fn peers(&self) -> Result<Vec<(u64, String)>, StoreError> {
        match self.meta.get(PEERS)? {
            Some(b) => serde_json::from_slice(&b).map_err(corrupt),
            None => Ok(Vec::new()),
        }
    }

    pub fn set_peers(&self, peers: &[(u64, String)]) -> Result<(), StoreError> {
        self.meta
            .insert(PEERS, serde_json::to_vec(peers).map_err(corrupt)?)?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Install a snapshot from the leader: restore the state machine and
    /// drop the log it covers.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> Result<(), StoreError> {
        let m = snap.get_metadata();
        let peers = match crate::snapshots::Reference::decode(snap.get_data()) {
            // Streamed to us beforehand as a file (see `snapshots.rs`).
            Some(_) => {
                let path = crate::snapshots::incoming(&self.snapshot_dir, m.index);
                let (header, mut reader) = crate::snapshots::open(&path).map_err(corrupt)?;
                if header.index != m.index {
                    return Err(corrupt("snapshot file is for another index"));
                }
                let peers: Vec<(u64, String)> =
                    serde_json::from_slice(&header.peers).map_err(corrupt)?;
                let dedup: DedupDump = serde_json::from_slice(&header.dedup).map_err(corrupt)?;
                // From here the state is half replaced until the end: a
                // node stopped meanwhile must not start on it (`open`).
                self.meta.insert(RESTORING, &m.index.to_be_bytes())?;
                self.db.flush()?;
                self.dedup_restore(dedup)?;
                let started = std::time::Instant::now();
                self.sm
                    .restore_from(&mut reader)
                    .map_err(StoreError::Corrupt)?;
                tracing::info!(
                    index = m.index,
                    secs = started.elapsed().as_secs_f64(),
                    "snapshot installed"
                );
                crate::snapshots::remove_older(&self.snapshot_dir, m.index + 1);
                peers
            }
            None => self.apply_inline_snapshot(snap.get_data())?,
        };
        self.set_peers(&peers)?;
        self.last.store(UNKNOWN, Ordering::Release);
        self.forget_from(0);
        self.log.clear()?;
        self.meta
            .insert(SNAPSHOT_META, m.write_to_bytes().map_err(corrupt)?)?;
        self.set_conf_state(m.get_conf_state())?;
        let mut hs = self.hard_state()?;
        hs.commit = hs.commit.max(m.index);
        hs.term = hs.term.max(m.term);
        self.set_hard_state(&hs)?;
        self.snap_index.store(m.index, Ordering::Release);
        self.snap_term.store(m.term, Ordering::Release);
        self.last.store(UNKNOWN, Ordering::Release);
        self.set_applied(m.index)?;
        self.meta.remove(RESTORING)?;
        self.flush()
    }

    /// A snapshot whose data is the state itself (nodes before streamed
    /// snapshots sent these): restores it and answers the members.
    fn apply_inline_snapshot(&self, data: &[u8]) -> Result<Vec<(u64, String)>, StoreError> {
        let (len, rest) = data
            .split_at_checked(4)
            .ok_or_else(|| corrupt("short snapshot"))?;
        let len = u32::from_be_bytes(len.try_into().map_err(corrupt)?) as usize;
        let (peers, rest) = rest
            .split_at_checked(len)
            .ok_or_else(|| corrupt("short snapshot"))?;
        let peers: Vec<(u64, String)> = serde_json::from_slice(peers).map_err(corrupt)?;
        let (dlen, rest) = rest
            .split_at_checked(4)
            .ok_or_else(|| corrupt("short snapshot"))?;
        let dlen = u32::from_be_bytes(dlen.try_into().map_err(corrupt)?) as usize;
        let (dedup, sm) = rest
            .split_at_checked(dlen)
            .ok_or_else(|| corrupt("short snapshot"))?;
        let dedup: DedupDump = serde_json::from_slice(dedup).map_err(corrupt)?;
        self.dedup_restore(dedup)?;
        self.sm.restore(sm).map_err(StoreError::Corrupt)?;
        Ok(peers)
    }

    /// Every follower is past the snapshot on offer (compaction may go on).
    pub fn snapshot_delivered(&self) {
        self.outgoing.delivered();
    }

    /// The index of a snapshot being built or on offer, if any.
    pub fn snapshot_hold(&self) -> Option<u64> {
        self.outgoing.hold()
    }

    /// Drop log entries up to `index` (applied), remembering its term.
    pub fn compact(&self, index: u64) -> Result<(), StoreError> {
        // A snapshot being built or on offer needs the entries after it.
        let index = match self.outgoing.hold() {
            Some(held) => index.min(held),
            None => index,
        };
        let first = self.first_index_inner();
        if index < first {
            return Ok(());
        }
        let term = self.term_inner(index)?;
        // The new first index is written before the entries go: sled
        // recovers a prefix of its writes, so a crash between leaves
        // entries below the first index (removed by the next compaction),
        // never a first index whose entries are gone.
        let mut m = SnapshotMetadata::default();
        m.index = index;
        m.term = term;
        m.set_conf_state(self.conf_state()?);
        self.meta
            .insert(SNAPSHOT_META, m.write_to_bytes().map_err(corrupt)?)?;
        self.snap_index.store(index, Ordering::Release);
        self.snap_term.store(term, Ordering::Release);
        // Unknown from here (an emptied log's last index is the
        // snapshot's), and left so if a removal fails part way.
        self.last.store(UNKNOWN, Ordering::Release);
        for k in self.log.range(..=index.to_be_bytes()).keys() {
            self.log.remove(k?)?;
        }
        Ok(())
    }

    fn first_index_inner(&self) -> u64 {
        self.snap_index.load(Ordering::Acquire) + 1
    }

    fn last_index_inner(&self) -> Result<u64, StoreError> {
        let known = self.last.load(Ordering::Acquire);
        if known != UNKNOWN {
            return Ok(known);
        }
        let last = match self.log.last()? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().map_err(corrupt)?),
            None => self.snap_index.load(Ordering::Acquire),
        };
        // Only the driver changes the log, and it is the one asking.
        self.last.store(last, Ordering::Release);
        Ok(last)
    }

    fn term_inner(&self, idx: u64) -> Result<u64, StoreError> {
        if idx == self.snap_index.load(Ordering::Acquire) {
            return Ok(self.snap_term.load(Ordering::Acquire));
        }
        if let Some(term) = self.remembered_term(idx) {
            return Ok(term);
        }
        match self.log.get(idx.to_be_bytes())? {
            Some(b) => entry_term(&b),
            None => Err(StoreError::Corrupt(format!("no entry {idx}"))),
        }
    }
}

/// An encoded entry's term, read without decoding (and copying) its data:
/// raft-rs asks for terms of entries that may hold megabytes.
fn entry_term(bytes: &[u8]) -> Result<u64, StoreError> {
    use protobuf::wire_format::WireType;
    let mut is = protobuf::CodedInputStream::from_bytes(bytes);
    // Field 2 of raft's `Entry` (eraftpb.proto): `uint64 term = 2`.
    const TERM: u32 = 2;
    while !is.eof().map_err(corrupt)? {
        let (field, wire) = is.read_tag_unpack().map_err(corrupt)?;
        if field == TERM && wire == WireType::WireTypeVarint {
            return is.read_uint64().map_err(corrupt);
        }
        is.skip_field(wire).map_err(corrupt)?;
    }
    // Absent: the default.
    Ok(0)
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state().map_err(to_raft)?,
            conf_state: self.conf_state().map_err(to_raft)?,
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_inner() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        if let Some(out) = self.remembered_entries(low, high, max) {
            return Ok(out);
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        let mut cut = false;
        for item in self.log.range(low.to_be_bytes()..high.to_be_bytes()) {
            let (_, v) = item.map_err(|e| to_raft(e.into()))?;
            let e = Entry::parse_from_bytes(&v).map_err(|e| to_raft(corrupt(e)))?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                cut = true;
                break;
            }
            out.push(e);
        }
        // Always at least one entry; fewer than asked only when cut by size.
        if out.is_empty() || (!cut && out.len() as u64 != high - low) {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let si = self.snap_index.load(Ordering::Acquire);
        if idx == si {
            return Ok(self.snap_term.load(Ordering::Acquire));
        }
        if idx < si {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index_inner().map_err(to_raft)? {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.term_inner(idx).map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_inner())
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.last_index_inner().map_err(to_raft)
    }

    /// A snapshot for a follower: a reference to a file this node built
    /// off the driver thread (`snapshots.rs`). While it is being built,
    /// raft-rs hears "temporarily unavailable" and asks again later. The
    /// snapshot is fixed here, in the driver's task, between two applies,
    /// so its index, term and members agree with its contents.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let applied = self.applied();
        if applied < request_index || applied < self.snap_index.load(Ordering::Acquire) {
            return Err(unavailable);
        }
        let request = || -> Result<crate::snapshots::Request<'_>, String> {
            // Peers' addresses travel with the snapshot: the conf changes
            // that carried them may be compacted away. The dedup window
            // travels too, so a node restored from a snapshot decides
            // duplicates exactly like the others.
            let peers = serde_json::to_vec(&self.peers().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let dedup = serde_json::to_vec(&self.dedup_dump().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            Ok(crate::snapshots::Request {
                applied,
                term: self.term_inner(applied).map_err(|e| e.to_string())?,
                conf: self.conf_state().map_err(|e| e.to_string())?,
                header: crate::snapshots::Header {
                    index: applied,
                    peers,
                    dedup,
                },
                sm: &self.sm,
            })
        };
        // raft-rs panics on any error but "temporarily unavailable".
        let members = match self.conf_state() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the members for a snapshot");
                return Err(unavailable);
            }
        };
        let Some(built) = self.outgoing.get(
            &self.snapshot_dir,
            request_index,
            self.first_index_inner(),
            &members,
            request,
        ) else {
            return Err(unavailable);
        };
        let mut snap = Snapshot::default();
        snap.set_data(
            crate::snapshots::Reference { size: built.size }
                .encode()
                .into(),
        );
        let m = snap.mut_metadata();
        m.index = built.index;
        m.term = built.term;
        m.set_conf_state(built.conf);
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl StateMachine for Nothing {
        fn apply(&self, _: u64, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn snapshot(&self) -> Result<Vec<u8>, String> {
            Ok(Vec::new())
        }
        fn restore(&self, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }

    fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to)
            .map(|index| {
                let mut e = Entry::default();
                e.index = index;
                e.term = term;
                e.data = vec![index as u8; 64].into();
                e
            })
            .collect()
    }

    /// The terms kept in memory answer as the tree does: through appends
    /// that replace entries, past how many are kept, after compaction and
    /// after the storage is opened again.
    #[test]
    fn remembered_terms_agree_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let s = SledStorage::open(db.clone(), Arc::new(Nothing), dir.path().join("snaps")).unwrap();
        let from_tree = |s: &SledStorage, idx: u64| {
            entry_term(&s.log.get(idx.to_be_bytes()).unwrap().unwrap()).unwrap()
        };
        let check = |s: &SledStorage, upto: u64| {
            let first = s.first_index_inner();
            for idx in first..=upto {
                assert_eq!(
                    raft::Storage::term(s, idx).unwrap(),
                    from_tree(s, idx),
                    "index {idx}"
                );
            }
            // Entries read back (to apply, to send) as the tree holds them,
            // and cut by size alike.
            for (lo, hi, max) in [
                (first, upto + 1, None),
                (upto.saturating_sub(3).max(first), upto + 1, None),
                (first, upto + 1, Some(200)),
                (first, upto + 1, Some(0)),
            ] {
                let got = raft::Storage::entries(s, lo, hi, max, GetEntriesContext::empty(false))
                    .unwrap();
                let mut want = Vec::new();
                let mut size = 0u64;
                for idx in lo..hi {
                    let e =
                        Entry::parse_from_bytes(&s.log.get(idx.to_be_bytes()).unwrap().unwrap())
                            .unwrap();
                    size += u64::from(e.compute_size());
                    if !want.is_empty() && size > max.unwrap_or(u64::MAX) {
                        break;
                    }
                    want.push(e);
                }
                assert_eq!(got, want, "{lo}..{hi} max {max:?}");
            }
        };
        s.append(&entries(1, 10, 1)).unwrap();
        assert_eq!(
            s.remembered_entries(1, 11, u64::MAX).map(|e| e.len()),
            Some(10)
        );
        check(&s, 10);
        // A new leader's entries replace 6.. (and 9, 10 are gone).
        s.append(&entries(6, 8, 2)).unwrap();
        assert_eq!(raft::Storage::term(&s, 6).unwrap(), 2);
        assert_eq!(raft::Storage::term(&s, 5).unwrap(), 1);
        assert!(raft::Storage::term(&s, 9).is_err());
        check(&s, 8);
        // More than are kept: older ones come from the tree.
        s.append(&entries(9, 9 + RECENT_ENTRIES as u64 + 50, 3))
            .unwrap();
        assert_eq!(s.remembered_term(5), None);
        assert_eq!(s.remembered_term(9 + RECENT_ENTRIES as u64 + 50), Some(3));
        check(&s, 9 + RECENT_ENTRIES as u64 + 50);
        s.compact(100).unwrap();
        check(&s, 9 + RECENT_ENTRIES as u64 + 50);
        drop(s);
        let s = SledStorage::open(db, Arc::new(Nothing), dir.path().join("snaps")).unwrap();
        assert_eq!(s.remembered_term(500), None);
        check(&s, 9 + RECENT_ENTRIES as u64 + 50);
    }

    /// A compaction cut short by a crash (the first index written, some
    /// entries below it not removed yet) leaves entries the next one
    /// removes; what raft-rs reads is right all along.
    #[test]
    fn entries_left_below_the_first_index_go_with_the_next_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let s = SledStorage::open(db.clone(), Arc::new(Nothing), dir.path().join("snaps")).unwrap();
        s.append(&entries(1, 40, 1)).unwrap();
        s.compact(10).unwrap();
        assert_eq!(raft::Storage::first_index(&s).unwrap(), 11);
        assert!(s.log.get(10u64.to_be_bytes()).unwrap().is_none());
        // As after a crash part way: entries 5..=10 are back in the tree.
        for e in entries(5, 10, 1) {
            s.log
                .insert(e.index.to_be_bytes(), e.write_to_bytes().unwrap())
                .unwrap();
        }
        drop(s);
        let s = SledStorage::open(db, Arc::new(Nothing), dir.path().join("snaps")).unwrap();
        assert_eq!(raft::Storage::first_index(&s).unwrap(), 11);
        assert_eq!(raft::Storage::last_index(&s).unwrap(), 40);
        assert_eq!(raft::Storage::term(&s, 10).unwrap(), 1);
        let got =
            raft::Storage::entries(&s, 11, 41, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.len(), 30);
        s.compact(20).unwrap();
        assert_eq!(raft::Storage::first_index(&s).unwrap(), 21);
        let left: Vec<u64> = s
            .log
            .iter()
            .keys()
            .map(|k| u64::from_be_bytes(k.unwrap().as_ref().try_into().unwrap()))
            .collect();
        assert_eq!(left, (21..=40).collect::<Vec<_>>());
    }

    #[test]
    fn an_entrys_term_is_read_without_decoding_the_rest() {
        let mut cases = Vec::new();
        let mut e = Entry::default();
        cases.push(e.clone()); // every field at its default
        e.term = 7;
        e.index = 42;
        e.data = vec![0xab; 100_000].into();
        e.context = b"ctx".to_vec().into();
        cases.push(e.clone());
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.term = u64::MAX;
        cases.push(e);
        for e in cases {
            let bytes = e.write_to_bytes().unwrap();
            assert_eq!(entry_term(&bytes).unwrap(), e.term);
        }
        // Cut short after the term: the term is read; cut short inside a
        // field before it: an error, not a panic or a guess.
        let mut e = Entry::default();
        e.data = vec![1; 64].into();
        e.term = 3;
        let bytes = e.write_to_bytes().unwrap();
        assert_eq!(entry_term(&bytes[..2]).unwrap(), 3);
        assert!(entry_term(&[0x22, 0x40, 1]).is_err());
    }
}
