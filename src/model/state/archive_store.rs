//! Where the archives (XEP-0313, `archive.rs`) are kept: many messages to
//! a sled value instead of one.
//!
//! `archive.rs` sees one sorted map of key -> value (an owner's positions
//! and aliases). sled 0.34 splits a leaf past 16 items and writes both
//! halves out whole, so a value per archived message cost a split every
//! few appends: in a profile of one node at 45,000 msg/s with the archive
//! on, sled's inserts were 36% of all samples. So the map is kept in two
//! trees:
//!
//! - **Chunks** (tree `archive`): a chunk holds sorted pairs of one owner;
//!   its sled key is its first pair's key, and it holds every pair of the
//!   map from there up to the next chunk's key. A value that is not in
//!   chunk form (written by an earlier version, or installed from a
//!   snapshot) is one pair under its own key.
//! - **The tail** (tree `archive_tail`): what was appended since, one sled
//!   value per append (a batch of pairs of any owners) under a sequence
//!   number, and the same pairs in memory, sorted. When an owner has
//!   [`FOLD_AT`] pairs in the tail, they move into its chunks in one write;
//!   when the tail holds more than [`MAX_BATCHES`] values, the owners of
//!   the oldest move, a few per append. Every change other than an append
//!   (a replacement, a removal) moves the whole tail first.
//!
//! Only the thread that applies commands writes; readers on any thread
//! copy the tail's part of their range, then read the chunks, and a pair
//! met in both (moved meanwhile) counts once.
//!
//! A crash between writing an owner's chunks and removing its tail value
//! leaves pairs in both: on opening, a tail item older than the owner's
//! last move (`archive_folded`) is dropped, and a pair read in both counts
//! once. Snapshots (`tracked.rs`) and [`ArchiveStore::logical`]
//! hold the map's pairs, never the chunks, so a node of any version can
//! install them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use sled::IVec;

use super::tracked::{DumpHook, Emit, Tracked};

/// An owner's pairs in the tail that move into its chunks at once.
pub const FOLD_AT: usize = 64;
/// Tail values kept before the owners of the oldest are moved.
pub const MAX_BATCHES: usize = 4096;
/// Owners moved for the oldest tail value per append; more, up to the
/// budget, while the tail is still past its bound.
const OLDEST_PER_APPEND: usize = 8;
const OLDEST_BUDGET: usize = 16;
/// A tail value or a chunk holds at most this many bytes of pairs (past
/// its first pair). sled keeps values inside its leaves (16 items), and
/// writes a leaf of over 128 KiB to a file of its own, created for it: in
/// a profile with chunks of up to 96 KiB, creating those files took 12%.
const VALUE_BYTES: usize = 6 << 10;
/// An owner's count in a tail value: its key (0xFF, the owner's name and
/// a 0; names are short) and 8 bytes, about.
const COUNT_BYTES: usize = 32;
/// A chunk holds at most this many pairs.
const CHUNK_PAIRS: usize = 128;
/// A chunk smaller than this is filled up by the next move; a larger one
/// is left as it is, and the moved pairs start a chunk of their own.
const CHUNK_KEEP_BYTES: usize = VALUE_BYTES / 2;

/// First bytes of a chunk value. No pair's value starts with 0xFF and is
/// longer than 8 bytes: a message's value starts with a JID (UTF-8) or 1,
/// an alias's is 8 bytes.
const CHUNK: [u8; 2] = [0xFF, 1];

type Pair = (IVec, IVec);

/// What the applying thread knows of one region's keys in the chunks
/// (see [`ArchiveStore::get_applying`]). A region's keys are a prefix and
/// 8 bytes (a position or an alias: the prefix, then an id).
struct Region {
    /// The region's last key.
    hi: Vec<u8>,
    /// The greatest of its keys in the chunks, if any.
    greatest: Option<Vec<u8>>,
    /// Every key of the region in the chunks that is past `floor` (all of
    /// them when None) and as long as `hi` is in `recent`; a key up to
    /// `floor`, or of another length, is looked for in the chunks.
    floor: Option<Vec<u8>>,
    /// The last 8 bytes of the keys moved into the chunks past `floor`
    /// since the region was first read, sorted, at most [`RECENT`].
    recent: Vec<u64>,
}

/// Keys a region remembers past its floor: in a cluster most messages
/// commit after one with a later id (the other party's node made it), and
/// their lookups land below the greatest key, often by tens of messages.
const RECENT: usize = 128;
/// Regions remembered at most (each up to about 1 KiB); past that they are
/// all forgotten, and read again when asked.
const REGIONS: usize = 1 << 15;

impl Region {
    /// `k`'s last 8 bytes, if it is as long as the region's keys.
    fn tail_of(&self, k: &[u8]) -> Option<u64> {
        if k.len() != self.hi.len() || k.len() < 8 {
            return None;
        }
        <[u8; 8]>::try_from(&k[k.len() - 8..])
            .ok()
            .map(u64::from_be_bytes)
    }

    /// Note `k` (within the region) written into the chunks.
    fn written(&mut self, k: &[u8]) {
        if self.greatest.as_deref().is_none_or(|g| k > g) {
            self.greatest = Some(k.to_vec());
        }
        if self.floor.as_deref().is_some_and(|f| k <= f) {
            return;
        }
        // A key of another length is always looked for in the chunks.
        let Some(n) = self.tail_of(k) else {
            return;
        };
        if self.recent.binary_search(&n).is_ok() {
            return;
        }
        if self.recent.len() >= RECENT {
            // Full: the lower half is forgotten (before the insert, so the
            // list never grows past RECENT), and the floor rises to the
            // greatest key forgotten.
            if let Some(top) = self.recent.drain(..RECENT / 2).next_back() {
                let mut f = k[..k.len() - 8].to_vec();
                f.extend_from_slice(&top.to_be_bytes());
                self.floor = Some(f);
            }
            if self.floor.as_deref().is_some_and(|f| k <= f) {
                return;
            }
        }
        if let Err(at) = self.recent.binary_search(&n) {
            self.recent.insert(at, n);
        }
    }

    /// Whether `key` (within the region) may be in the chunks.
    fn may_hold(&self, key: &[u8]) -> bool {
        if self.greatest.as_deref().is_none_or(|g| key > g) {
            return false;
        }
        if self.floor.as_deref().is_some_and(|f| key <= f) {
            return true;
        }
        self.tail_of(key)
            .is_none_or(|n| self.recent.binary_search(&n).is_ok())
    }
}

/// What an owner's pairs start with (`roster::prefix`: the name and a 0).
fn owner_of(key: &[u8]) -> &[u8] {
    match key.iter().position(|b| *b == 0) {
        Some(i) => &key[..=i],
        None => key,
    }
}

/// The first key past every key that starts with `prefix`.
fn after_prefix(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xFF {
            p.push(last + 1);
            return Bound::Excluded(p);
        }
    }
    Bound::Unbounded
}

/// Bounds no key is within (a BTreeMap range over them would panic).
fn empty(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
            a >= b
        }
        _ => false,
    }
}

fn is_chunk(v: &[u8]) -> bool {
    v.len() > 8 && v.starts_with(&CHUNK)
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn encode<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut out = CHUNK.to_vec();
    for (k, v) in pairs {
        put_len(&mut out, k.len());
        out.extend_from_slice(k);
        put_len(&mut out, v.len());
        out.extend_from_slice(v);
    }
    out
}

/// The pairs of a chunk or tail value (sub-slices, no copies); a damaged
/// value yields what precedes the damage.
fn decode(v: &IVec) -> Vec<Pair> {
    let mut pairs = Vec::new();
    let mut at = CHUNK.len();
    let len = |at: usize| -> Option<usize> {
        let b: [u8; 4] = v.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(b) as usize)
    };
    while at < v.len() {
        let Some(kl) = len(at) else { break };
        let k_at = at + 4;
        let Some(vl) = k_at.checked_add(kl).and_then(len) else {
            break;
        };
        let v_at = k_at + kl + 4;
        if v_at + vl > v.len() {
            break;
        }
        pairs.push((v.subslice(k_at, kl), v.subslice(v_at, vl)));
        at = v_at + vl;
    }
    pairs
}

/// The value under `key` in a chunk, read in place (appends in a cluster
/// look up two keys per message: no pair is copied).
fn find(v: &IVec, key: &[u8]) -> Option<IVec> {
    let mut at = CHUNK.len();
    let len = |at: usize| -> Option<usize> {
        let b: [u8; 4] = v.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_be_bytes(b) as usize)
    };
    while at < v.len() {
        let kl = len(at)?;
        let k = v.get(at + 4..at + 4 + kl)?;
        let vl = len(at + 4 + kl)?;
        let v_at = at + 8 + kl;
        match k.cmp(key) {
            std::cmp::Ordering::Less => at = v_at + vl,
            std::cmp::Ordering::Equal => {
                return (v_at + vl <= v.len()).then(|| v.subslice(v_at, vl));
            }
            std::cmp::Ordering::Greater => return None,
        }
    }
    None
}

/// The pairs of a chunk that are its own: those below the next chunk's
/// key. A chunk rewritten in pieces is written after its later pieces
/// (`write_pieces`), so until then (or after a crash) it still holds pairs
/// a later piece holds too; only the later piece's count.
fn owned(mut pairs: Vec<Pair>, next_pk: Option<&[u8]>) -> Vec<Pair> {
    if let Some(n) = next_pk {
        let end = pairs.partition_point(|(k, _)| k.as_ref() < n);
        pairs.truncate(end);
    }
    pairs
}

/// The pairs a chunk-tree entry holds.
fn pairs_of(k: IVec, v: IVec) -> Vec<Pair> {
    if is_chunk(&v) {
        decode(&v)
    } else {
        vec![(k, v)]
    }
}

fn below(k: &[u8], hi: &Bound<Vec<u8>>) -> bool {
    match hi {
        Bound::Included(h) => k <= h.as_slice(),
        Bound::Excluded(h) => k < h.as_slice(),
        Bound::Unbounded => true,
    }
}

fn above(k: &[u8], lo: &Bound<Vec<u8>>) -> bool {
    match lo {
        Bound::Included(l) => k >= l.as_slice(),
        Bound::Excluded(l) => k > l.as_slice(),
        Bound::Unbounded => true,
    }
}

#[derive(Default)]
struct Tail {
    /// Key -> (value, the tail value's sequence number).
    pairs: BTreeMap<Vec<u8>, (IVec, u64)>,
    /// Owner -> its pairs in the tail.
    owners: HashMap<Vec<u8>, usize>,
    /// Owner -> the bytes its archive holds, as of its last append (from
    /// the tail; an owner not here has its count in the `archive_used` tree).
    used: HashMap<Vec<u8>, u64>,
    /// Owner -> the tail values that hold a count of its.
    used_at: HashMap<Vec<u8>, Vec<u64>>,
    /// Sequence number -> (items not moved yet, owners that had items
    /// there: some may have moved since, some be named twice).
    batches: BTreeMap<u64, (usize, Vec<Vec<u8>>)>,
    next_seq: u64,
    /// Appended and not written to the tail tree yet (`end_append`).
    pending: Vec<(Vec<u8>, IVec)>,
    pending_bytes: usize,
    /// Owner -> its count after its last pending pair.
    pending_used: HashMap<Vec<u8>, u64>,
    /// Owners with pairs in this append (some named twice).
    touched: Vec<Vec<u8>>,
    /// Region (its first key) -> what is known of its keys in the chunks:
    /// see [`ArchiveStore::get_applying`]. Read and written by the
    /// applying thread only.
    frontier: BTreeMap<Vec<u8>, Region>,
}

impl Tail {
    fn hold(&mut self, seq: u64, owner: &[u8]) {
        let b = self.batches.entry(seq).or_default();
        b.0 += 1;
        if b.1.last().map(Vec::as_slice) != Some(owner) {
            b.1.push(owner.to_vec());
        }
    }

    /// `owner`'s count now, to be written with the pending pairs (one
    /// entry per owner and value).
    fn note_used(&mut self, owner: &[u8], n: u64) {
        match self.used.get_mut(owner) {
            Some(u) => *u = n,
            None => {
                self.used.insert(owner.to_vec(), n);
            }
        }
        match self.pending_used.get_mut(owner) {
            Some(u) => *u = n,
            None => {
                self.pending_used.insert(owner.to_vec(), n);
            }
        }
    }

    /// One item of a tail value moved; true if that leaves it empty.
    fn release(&mut self, seq: u64) -> bool {
        let Some(b) = self.batches.get_mut(&seq) else {
            return false;
        };
        b.0 = b.0.saturating_sub(1);
        if b.0 == 0 {
            self.batches.remove(&seq);
            return true;
        }
        false
    }
}

/// What the state was at a snapshot's index, taken on the thread that
/// applies commands ([`ArchiveStore::capture`]): the tail's pairs and the
/// owners' byte counts the tail holds.
pub struct Captured {
    pairs: Vec<Pair>,
    used: HashMap<Vec<u8>, u64>,
}

/// One archive map over chunks and a tail (see the module's text).
pub struct ArchiveStore {
    chunks: Tracked,
    /// Username -> the bytes its archive holds (what the quota counts), for
    /// owners with nothing in the tail (`archive_used`, replicated).
    used: Tracked,
    /// Not replicated: the tail (sequence number -> pairs and counts), and
    /// owner -> the first sequence number after its last move.
    tail_tree: sled::Tree,
    folded: sled::Tree,
    /// Not replicated: the chunk being rewritten in pieces, if any (see
    /// [`ArchiveStore::write_pieces`]); mended on opening.
    rewriting: sled::Tree,
    tail: Mutex<Tail>,
}

/// A sorted run of pairs, read chunk by chunk (see [`ArchiveStore::range`]).
pub struct Range<'a> {
    store: &'a ArchiveStore,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    backward: bool,
    /// The tail's pairs in the range, in the order of the walk.
    tail: std::vec::IntoIter<Pair>,
    tail_next: Option<Pair>,
    /// Pairs of the chunk being read, in the order of the walk.
    chunk: std::vec::IntoIter<Pair>,
    chunk_next: Option<Pair>,
    /// Where the walk over the chunk tree goes on (None: it is done).
    cursor: Option<Bound<Vec<u8>>>,
    /// No chunk read yet.
    first: bool,
    /// The key of the chunk read last going backward: a chunk holds only
    /// the keys below the next chunk's (see [`owned`]).
    above_pk: Option<IVec>,
    /// The last key this walk gave: it never gives one twice.
    last: Option<IVec>,
}

/// The key of an owner's byte count inside a tail value: no pair's key
/// starts with 0xFF (a username is UTF-8).
fn used_key(owner: &[u8]) -> Vec<u8> {
    let mut k = vec![0xFF];
    k.extend_from_slice(owner);
    k
}

/// The `archive_used` key of an owner (its username, without the 0).
fn username(owner: &[u8]) -> &[u8] {
    owner.strip_suffix(&[0]).unwrap_or(owner)
}

fn seq_of(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

impl ArchiveStore {
    pub fn open(db: &sled::Db, chunks: Tracked, used: Tracked) -> sled::Result<ArchiveStore> {
        let s = ArchiveStore {
            chunks,
            used,
            tail_tree: db.open_tree("archive_tail")?,
            folded: db.open_tree("archive_folded")?,
            rewriting: db.open_tree("archive_rewriting")?,
            tail: Mutex::new(Tail::default()),
        };
        s.reload()?;
        Ok(s)
    }

    fn lock(&self) -> MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Empty the tail (a snapshot is being installed: the chunk and count
    /// trees are replaced, and hold every pair).
    pub fn reset(&self) -> sled::Result<()> {
        self.tail_tree.clear()?;
        self.folded.clear()?;
        self.rewriting.clear()?;
        *self.lock() = Tail::default();
        Ok(())
    }

    /// Read the tail from its tree again (on opening, after a snapshot was
    /// installed, after a write failed part way). An owner's items older
    /// than its last move were moved (the move ended before their value
    /// was removed): they are dropped, and a value left with none removed.
    pub fn reload(&self) -> sled::Result<()> {
        self.mend_rewrites()?;
        let mut t = Tail::default();
        let mut folded: HashMap<Vec<u8>, u64> = HashMap::new();
        for kv in self.folded.iter() {
            let (owner, v) = kv?;
            if let Some(seq) = seq_of(&v) {
                t.next_seq = t.next_seq.max(seq);
                folded.insert(owner.to_vec(), seq);
            }
        }
        let mut dead = Vec::new();
        for kv in self.tail_tree.iter() {
            let (sk, v) = kv?;
            let Some(seq) = seq_of(&sk) else {
                dead.push(sk);
                continue;
            };
            t.next_seq = t.next_seq.max(seq + 1);
            for (k, val) in decode(&v) {
                let count = k.first() == Some(&0xFF);
                let owner = if count { &k[1..] } else { owner_of(&k) };
                if folded.get(owner).is_some_and(|f| seq < *f) {
                    continue;
                }
                if count {
                    if let Some(n) = seq_of(&val) {
                        t.used.insert(owner.to_vec(), n);
                        t.used_at.entry(owner.to_vec()).or_default().push(seq);
                        t.hold(seq, owner);
                    }
                    continue;
                }
                match t.pairs.insert(k.to_vec(), (val, seq)) {
                    Some((_, old)) => {
                        t.release(old);
                    }
                    None => *t.owners.entry(owner.to_vec()).or_default() += 1,
                }
                t.hold(seq, owner);
            }
            if !t.batches.contains_key(&seq) {
                dead.push(sk);
            }
        }
        *self.lock() = t;
        for sk in dead {
            self.tail_tree.remove(sk)?;
        }
        Ok(())
    }

    /// A chunk whose rewrite stopped part way (a crash, a failed write)
    /// still holds pairs that later chunks hold: reads skip them
    /// ([`owned`]), but a snapshot copies chunk values as they are, so the
    /// chunk is written again with only its own pairs, before anything
    /// else happens.
    fn mend_rewrites(&self) -> sled::Result<()> {
        for kv in self.rewriting.iter() {
            let (pk, _) = kv?;
            if let Some(v) = self.chunks.get(&pk)? {
                if is_chunk(&v) {
                    let next_pk = self.chunk_after(pk.as_ref())?;
                    let held = decode(&v);
                    let n = held.len();
                    let own = owned(held, next_pk.as_deref());
                    if own.is_empty() {
                        self.chunks.remove(&pk)?;
                    } else if own.len() < n {
                        tracing::info!(chunk = ?pk, dropped = n - own.len(), "archive: a chunk's rewrite had stopped part way; its stale pairs are dropped");
                        self.chunks.insert(
                            &pk,
                            encode(own.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))),
                        )?;
                    }
                }
            }
            self.rewriting.remove(&pk)?;
        }
        Ok(())
    }

    /// The bytes `owner`'s archive holds (what the quota counts).
    pub fn used(&self, owner: &[u8]) -> sled::Result<u64> {
        if let Some(n) = self.lock().used.get(owner) {
            return Ok(*n);
        }
        Ok(self
            .used
            .get(username(owner))?
            .and_then(|v| seq_of(&v))
            .unwrap_or(0))
    }

    /// Set `owner`'s count after a change other than an append (the tail
    /// has moved: [`ArchiveStore::insert`] and the others move it first).
    pub fn set_used(&self, owner: &[u8], n: u64) -> sled::Result<()> {
        self.fold_all()?;
        self.used.insert(username(owner), &n.to_be_bytes())?;
        Ok(())
    }

    /// `owner`'s count after the pairs appended now; written with them.
    #[cfg(test)]
    pub fn note_used(&self, owner: &[u8], n: u64) {
        self.lock().note_used(owner, n);
    }

    /// Forget `owner`'s count (its archive is gone; the tail has moved).
    pub fn drop_used(&self, owner: &[u8]) -> sled::Result<()> {
        self.fold_all()?;
        self.used.remove(username(owner))?;
        Ok(())
    }

    /// Every owner's count (metrics; the `archive_used` tree as the tail
    /// corrects it).
    pub fn used_all(&self) -> sled::Result<Vec<(Vec<u8>, u64)>> {
        let tail = self.lock().used.clone();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for kv in self.used.iter() {
            let (name, v) = kv?;
            let mut owner = name.to_vec();
            owner.push(0);
            let n = tail
                .get(&owner)
                .copied()
                .or_else(|| seq_of(&v))
                .unwrap_or(0);
            out.push((name.to_vec(), n));
            seen.insert(owner);
        }
        for (owner, n) in tail {
            if !seen.contains(&owner) {
                out.push((username(&owner).to_vec(), n));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The tail as it is now, for a snapshot fixed now (`State::begin_snapshot`).
    pub fn capture(&self) -> Captured {
        let t = self.lock();
        Captured {
            pairs: t
                .pairs
                .iter()
                .map(|(k, (v, _))| (IVec::from(k.as_slice()), v.clone()))
                .collect(),
            used: t.used.clone(),
        }
    }

    /// [`ArchiveStore::get`] for the thread that applies commands, for a
    /// key within `lo..=hi` (a region of one owner's keys: its positions,
    /// its aliases). A key past the greatest of the region's keys in the
    /// chunks, or past its floor and not among the keys moved there since
    /// ([`Region`]), is not looked for there: in a cluster most messages
    /// commit after one with a later id, and each costs two lookups of
    /// keys that are only ever near the end.
    pub fn get_applying(&self, key: &[u8], lo: &[u8], hi: &[u8]) -> sled::Result<Option<IVec>> {
        let known = {
            let t = self.lock();
            if let Some((v, _)) = t.pairs.get(key) {
                return Ok(Some(v.clone()));
            }
            t.frontier
                .get(lo)
                .filter(|r| r.hi.as_slice() == hi)
                .map(|r| r.may_hold(key))
        };
        let may_hold = match known {
            Some(m) => m,
            None => {
                let greatest = self.greatest_in(lo, hi)?;
                let region = Region {
                    hi: hi.to_vec(),
                    floor: greatest.clone(),
                    greatest,
                    recent: Vec::new(),
                };
                let may_hold = region.may_hold(key);
                let mut t = self.lock();
                if t.frontier.len() >= REGIONS {
                    t.frontier.clear();
                }
                t.frontier.insert(lo.to_vec(), region);
                may_hold
            }
        };
        if !may_hold {
            return Ok(None);
        }
        self.chunk_get(key)
    }

    /// The greatest key within `lo..=hi` in the chunks: in the chunk that
    /// holds `hi`'s place, or nowhere (a pair of the region in an earlier
    /// chunk would be in that one).
    fn greatest_in(&self, lo: &[u8], hi: &[u8]) -> sled::Result<Option<Vec<u8>>> {
        let Some((pk, pv)) = self.chunks.range(..=hi).next_back().transpose()? else {
            return Ok(None);
        };
        Ok(pairs_of(pk, pv)
            .into_iter()
            .rev()
            .map(|(k, _)| k)
            .find(|k| k.as_ref() <= hi)
            .filter(|k| k.as_ref() >= lo)
            .map(|k| k.to_vec()))
    }

    /// Keep what [`ArchiveStore::get_applying`] knows of the regions true
    /// after pairs were written into the chunks.
    fn written(&self, keys: &[(&[u8], &[u8])]) {
        let mut t = self.lock();
        if t.frontier.is_empty() {
            return;
        }
        for (k, _) in keys {
            let Some((_, region)) = t
                .frontier
                .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(*k)))
                .next_back()
            else {
                continue;
            };
            if *k <= region.hi.as_slice() {
                region.written(k);
            }
        }
    }

    /// The key of the first chunk past `key`: a chunk owns only the keys
    /// below it ([`owned`]).
    fn chunk_after(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        self.chunks
            .range::<&[u8], _>((Bound::Excluded(key), Bound::Unbounded))
            .keys()
            .next()
            .transpose()
    }

    /// The pair under `key` in the chunks only.
    fn chunk_get(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        let Some((pk, pv)) = self.chunks.range(..=key).next_back().transpose()? else {
            return Ok(None);
        };
        if !is_chunk(&pv) {
            return Ok((pk.as_ref() == key).then_some(pv));
        }
        Ok(find(&pv, key))
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        let key = key.as_ref();
        if let Some((v, _)) = self.lock().pairs.get(key) {
            return Ok(Some(v.clone()));
        }
        self.chunk_get(key)
    }

    /// The pairs with keys within `lo..hi`, forward or `backward`.
    pub fn range(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>, backward: bool) -> Range<'_> {
        let mut tail: Vec<Pair> = {
            let t = self.lock();
            if empty(&lo, &hi) {
                Vec::new()
            } else {
                t.pairs
                    .range::<Vec<u8>, _>((lo.clone(), hi.clone()))
                    .map(|(k, (v, _))| (IVec::from(k.as_slice()), v.clone()))
                    .collect()
            }
        };
        if backward {
            tail.reverse();
        }
        let cursor = Some(if backward { hi.clone() } else { lo.clone() });
        let mut tail = tail.into_iter();
        let tail_next = tail.next();
        Range {
            store: self,
            lo,
            hi,
            backward,
            tail,
            tail_next,
            chunk: Vec::new().into_iter(),
            chunk_next: None,
            cursor,
            first: true,
            above_pk: None,
            last: None,
        }
    }

    /// Every pair whose key starts with `prefix`, in order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Range<'_> {
        let prefix = prefix.as_ref();
        self.range(
            Bound::Included(prefix.to_vec()),
            after_prefix(prefix),
            false,
        )
    }

    /// Add one message's pairs (keys of one owner not in the map yet), and
    /// the owner's byte count after them: to the tail, in memory at once
    /// (later reads of the same append see them), on disk at
    /// [`ArchiveStore::end_append`] or when the append's pending pairs fill
    /// a value. A message's pairs and the count after them always go in
    /// one tail value: after a crash between two values of one append, the
    /// command applied again finds each message whole or absent, and the
    /// count read back covers exactly the messages found.
    pub fn append_message(&self, writes: Vec<(Vec<u8>, Vec<u8>)>, used: u64) -> sled::Result<()> {
        self.add(writes, Some(used))
    }

    /// [`ArchiveStore::append_message`], the count optional.
    fn add(&self, writes: Vec<(Vec<u8>, Vec<u8>)>, used: Option<u64>) -> sled::Result<()> {
        let Some(owner) = writes.first().map(|(k, _)| owner_of(k).to_vec()) else {
            return Ok(());
        };
        let mut t = self.lock();
        // Room for the counts that go with the pairs (one per owner).
        let bytes: usize = writes
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
            + COUNT_BYTES * (t.pending_used.len() + 1);
        if t.pending_bytes + bytes > VALUE_BYTES && !t.pending.is_empty() {
            self.write_pending(&mut t)?;
        }
        for (key, value) in writes {
            self.hold_pair(&mut t, key, IVec::from(value), &owner);
        }
        if let Some(n) = used {
            t.note_used(&owner, n);
        }
        if t.touched.last() != Some(&owner) {
            t.touched.push(owner);
        }
        Ok(())
    }

    /// One pair into the pending value and the tail's memory.
    fn hold_pair(&self, t: &mut Tail, key: Vec<u8>, value: IVec, owner: &[u8]) {
        let seq = t.next_seq;
        t.pending_bytes += key.len() + value.len() + 8;
        t.pending.push((key.clone(), value.clone()));
        match t.pairs.insert(key, (value, seq)) {
            Some((_, old)) => {
                t.release(old);
            }
            None => match t.owners.get_mut(owner) {
                Some(n) => *n += 1,
                None => {
                    t.owners.insert(owner.to_vec(), 1);
                }
            },
        }
        t.hold(seq, owner);
    }

    /// [`ArchiveStore::append_message`] for one pair, its count noted
    /// apart ([`ArchiveStore::note_used`]).
    #[cfg(test)]
    pub fn append(&self, key: Vec<u8>, value: Vec<u8>) -> sled::Result<()> {
        self.add(vec![(key, value)], None)
    }

    /// Write the pending pairs (and, at the end of an append, the counts)
    /// as one tail value.
    fn write_pending(&self, t: &mut Tail) -> sled::Result<()> {
        let used = std::mem::take(&mut t.pending_used);
        if t.pending.is_empty() && used.is_empty() {
            return Ok(());
        }
        let seq = t.next_seq;
        let counts: Vec<(Vec<u8>, [u8; 8])> = used
            .iter()
            .map(|(owner, n)| (used_key(owner), n.to_be_bytes()))
            .collect();
        let v = encode(
            t.pending
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_ref()))
                .chain(counts.iter().map(|(k, n)| (k.as_slice(), n.as_slice()))),
        );
        self.tail_tree.insert(seq.to_be_bytes(), v)?;
        for owner in used.keys() {
            t.used_at.entry(owner.clone()).or_default().push(seq);
            t.hold(seq, owner);
        }
        t.pending.clear();
        t.pending_bytes = 0;
        t.next_seq += 1;
        Ok(())
    }

    /// Write what was appended (with the counts noted), then move the
    /// owners that have enough in the tail (and some of the oldest value's)
    /// into their chunks.
    pub fn end_append(&self) -> sled::Result<()> {
        let (full, oldest) = {
            let mut t = self.lock();
            let mut owners = std::mem::take(&mut t.touched);
            owners.sort_unstable();
            owners.dedup();
            // The counts go with the last pairs, in one value (a little
            // past VALUE_BYTES at most: room is kept for them).
            self.write_pending(&mut t)?;
            let full: Vec<Vec<u8>> = owners
                .into_iter()
                .filter(|o| t.owners.get(o).is_some_and(|n| *n >= FOLD_AT))
                .collect();
            // The oldest value's owners, a few at a time (each named once
            // only: an owner that moved meanwhile costs a lookup).
            let oldest: Vec<Vec<u8>> = if t.batches.len() > MAX_BATCHES {
                t.batches
                    .values_mut()
                    .next()
                    .map(|b| {
                        let keep = b.1.len().saturating_sub(OLDEST_PER_APPEND);
                        b.1.split_off(keep)
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            (full, oldest)
        };
        let mut done = HashSet::new();
        for owner in full.into_iter().chain(oldest) {
            if done.insert(owner.clone()) {
                self.fold_owner(&owner)?;
            }
        }
        // Past the bound still (an append over many owners): more of the
        // oldest values' owners, up to a budget per append.
        let mut budget = OLDEST_BUDGET;
        while budget > 0 {
            let owner = {
                let mut t = self.lock();
                if t.batches.len() <= MAX_BATCHES {
                    break;
                }
                match t.batches.values_mut().next().and_then(|b| b.1.pop()) {
                    Some(o) => o,
                    None => {
                        drop(t);
                        // The oldest value's owners were all moved and it
                        // still counts items: never, but the tail must not
                        // grow without end.
                        return self.fold_all();
                    }
                }
            };
            if done.insert(owner.clone()) {
                self.fold_owner(&owner)?;
                budget -= 1;
            }
        }
        Ok(())
    }

    /// Move one owner's tail pairs into its chunks, and its count into
    /// `archive_used`; then note (in `archive_folded`) that its items in the
    /// tail values written so far are moved, and remove the values left
    /// empty. A crash at any point between leaves a state `reload` reads
    /// right: the pairs and count in the tail until the last step.
    fn fold_owner(&self, owner: &[u8]) -> sled::Result<()> {
        let (pairs, count, seqs, next_seq) = {
            let t = self.lock();
            let pairs: Vec<(Vec<u8>, IVec, u64)> = t
                .pairs
                .range::<Vec<u8>, _>((Bound::Included(owner.to_vec()), after_prefix(owner)))
                .map(|(k, (v, seq))| (k.clone(), v.clone(), *seq))
                .collect();
            (
                pairs,
                t.used.get(owner).copied(),
                t.used_at.get(owner).cloned().unwrap_or_default(),
                t.next_seq,
            )
        };
        if pairs.is_empty() && seqs.is_empty() {
            return Ok(());
        }
        let run: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v, _)| (k.as_slice(), v.as_ref()))
            .collect();
        self.merge(&run)?;
        if let Some(n) = count {
            self.used.insert(username(owner), &n.to_be_bytes())?;
        }
        self.folded.insert(owner, &next_seq.to_be_bytes())?;
        let mut emptied = Vec::new();
        {
            let mut t = self.lock();
            for (k, _, seq) in &pairs {
                if t.pairs.remove(k).is_some() && t.release(*seq) {
                    emptied.push(*seq);
                }
            }
            for seq in seqs {
                if t.release(seq) {
                    emptied.push(seq);
                }
            }
            t.owners.remove(owner);
            t.used.remove(owner);
            t.used_at.remove(owner);
        }
        for seq in emptied {
            self.tail_tree.remove(seq.to_be_bytes())?;
        }
        Ok(())
    }

    /// Move the whole tail into the chunks (before any change but an
    /// append).
    pub fn fold_all(&self) -> sled::Result<()> {
        let owners: HashSet<Vec<u8>> = {
            let t = self.lock();
            t.owners.keys().chain(t.used.keys()).cloned().collect()
        };
        for owner in owners {
            self.fold_owner(&owner)?;
        }
        // Values left with nothing (all moved) are gone; anything else
        // left would be an item the map lost track of: read it again.
        if !self.lock().batches.is_empty() {
            self.reload()?;
        }
        Ok(())
    }

    /// Write sorted pairs (of one owner, or of any: each run is placed on
    /// its own) into the chunks, in place of pairs with the same keys.
    fn merge(&self, pairs: &[(&[u8], &[u8])]) -> sled::Result<()> {
        let mut i = 0;
        while i < pairs.len() {
            let k = pairs[i].0;
            let owner = owner_of(k);
            let target = self
                .chunks
                .range(..=k)
                .next_back()
                .transpose()?
                .filter(|(pk, _)| owner_of(pk) == owner);
            let upper = self.chunk_after(k)?;
            // This run: the owner's pairs before the next chunk.
            let n = pairs[i..]
                .iter()
                .position(|(key, _)| {
                    owner_of(key) != owner || upper.as_ref().is_some_and(|u| *key >= u.as_ref())
                })
                .unwrap_or(pairs.len() - i);
            let run = &pairs[i..i + n];
            i += n;
            match target {
                Some((pk, pv)) => {
                    let old_bytes = pv.len();
                    let old = owned(pairs_of(pk.clone(), pv), upper.as_deref());
                    let last_old = old.last().map(|(k, _)| k.clone());
                    let appends_only = last_old.as_ref().is_none_or(|l| run[0].0 > l.as_ref());
                    if appends_only && (old_bytes >= CHUNK_KEEP_BYTES || old.len() >= CHUNK_PAIRS) {
                        self.write_pieces(run.iter().copied(), None)?;
                        continue;
                    }
                    // Merge: the run's pair wins over an old one.
                    let mut merged: Vec<(&[u8], &[u8])> = Vec::with_capacity(old.len() + run.len());
                    let (mut a, mut b) = (0, 0);
                    while a < old.len() || b < run.len() {
                        let take_old = match (old.get(a), run.get(b)) {
                            (Some(o), Some(r)) => match o.0.as_ref().cmp(r.0) {
                                std::cmp::Ordering::Less => true,
                                std::cmp::Ordering::Equal => {
                                    a += 1;
                                    false
                                }
                                std::cmp::Ordering::Greater => false,
                            },
                            (Some(_), None) => true,
                            _ => false,
                        };
                        if take_old {
                            merged.push((old[a].0.as_ref(), old[a].1.as_ref()));
                            a += 1;
                        } else {
                            merged.push(run[b]);
                            b += 1;
                        }
                    }
                    self.write_pieces(merged.into_iter(), Some(pk.as_ref()))?;
                }
                None => self.write_pieces(run.iter().copied(), None)?,
            }
        }
        self.written(pairs);
        Ok(())
    }

    /// Write sorted pairs as chunks of at most [`CHUNK_PAIRS`] pairs and
    /// [`VALUE_BYTES`] bytes, each under its first key. `replacing`: the
    /// chunk these pairs replace, removed if its key is no longer a first.
    fn write_pieces<'a>(
        &self,
        pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        replacing: Option<&[u8]>,
    ) -> sled::Result<()> {
        let mut pieces: Vec<Vec<(&[u8], &[u8])>> = vec![Vec::new()];
        let mut bytes = 0;
        for (k, v) in pairs {
            let Some(piece) = pieces.last_mut() else {
                break;
            };
            if !piece.is_empty()
                && (piece.len() >= CHUNK_PAIRS || bytes + k.len() + v.len() > VALUE_BYTES)
            {
                pieces.push(Vec::new());
                bytes = 0;
            }
            bytes += k.len() + v.len();
            if let Some(piece) = pieces.last_mut() {
                piece.push((k, v));
            }
        }
        // Later pieces first, the one in place of `replacing` last: until
        // then (or after a crash) the old chunk still holds every pair it
        // held, and a pair a later piece holds too is that piece's
        // ([`owned`]); nothing is ever only in memory. Such a rewrite is
        // noted first, so that a crash part way is mended on opening
        // ([`ArchiveStore::mend_rewrites`]); one written in place is a
        // single insert and needs no note.
        let in_place = pieces.len() == 1 && pieces[0].first().map(|p| p.0) == replacing;
        let noted = match replacing {
            Some(r) if !in_place => {
                self.rewriting.insert(r, &[])?;
                Some(r)
            }
            _ => None,
        };
        let mut replaced = replacing.is_none();
        for piece in pieces.iter().rev() {
            let Some((first, _)) = piece.first() else {
                continue;
            };
            replaced |= replacing == Some(*first);
            self.chunks.insert(first, encode(piece.iter().copied()))?;
            #[cfg(test)]
            if tests::stop_here() {
                return Err(sled::Error::Unsupported("stopped by a test".into()));
            }
        }
        if !replaced {
            if let Some(r) = replacing {
                self.chunks.remove(r)?;
            }
        }
        if let Some(r) = noted {
            self.rewriting.remove(r)?;
        }
        Ok(())
    }

    /// Put `value` under `key` (a pair there or not): the tail moves first.
    pub fn insert(&self, key: &[u8], value: &[u8]) -> sled::Result<()> {
        self.fold_all()?;
        self.merge(&[(key, value)])
    }

    /// Remove the pairs within `lo..hi` that `keep` does not keep; returns
    /// how many went. The tail moves first.
    pub fn retain_range(
        &self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        mut keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> sled::Result<usize> {
        if empty(&lo, &hi) {
            return Ok(0);
        }
        self.fold_all()?;
        // Removals may lower the greatest keys: read them again when asked.
        self.lock().frontier.clear();
        // The chunks the range touches: the one it starts in, and those
        // whose keys fall within it.
        let start = match &lo {
            Bound::Included(l) | Bound::Excluded(l) => self
                .chunks
                .range(..=l.as_slice())
                .keys()
                .next_back()
                .transpose()?
                .map(|k| Bound::Included(k.to_vec()))
                .unwrap_or_else(|| lo.clone()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut gone = 0;
        // A chunk at a time (the range may be a whole archive), each read
        // again after the one before was rewritten.
        let mut cursor = start;
        loop {
            let Some((pk, pv)) = self
                .chunks
                .range::<Vec<u8>, _>((cursor, hi.clone()))
                .next()
                .transpose()?
            else {
                break;
            };
            let next_pk = self.chunk_after(pk.as_ref())?;
            cursor = match &next_pk {
                Some(n) => Bound::Included(n.to_vec()),
                None => Bound::Excluded(pk.to_vec()),
            };
            let held = pairs_of(pk.clone(), pv);
            let stale = held.len();
            let pairs = owned(held, next_pk.as_deref());
            let stale = stale - pairs.len();
            let before = pairs.len();
            let kept: Vec<(&[u8], &[u8])> = pairs
                .iter()
                .filter(|(k, v)| !(above(k, &lo) && below(k, &hi)) || keep(k, v))
                .map(|(k, v)| (k.as_ref(), v.as_ref()))
                .collect();
            if kept.len() == before && stale == 0 {
                if next_pk.is_none() {
                    break;
                }
                continue;
            }
            gone += before - kept.len();
            if kept.is_empty() {
                self.chunks.remove(&pk)?;
            } else {
                self.write_pieces(kept.into_iter(), Some(pk.as_ref()))?;
            }
            if next_pk.is_none() {
                break;
            }
        }
        Ok(gone)
    }

    /// Remove every pair whose key starts with `prefix` (an account deleted,
    /// its archive purged).
    pub fn remove_prefix(&self, prefix: &[u8]) -> sled::Result<usize> {
        self.retain_range(
            Bound::Included(prefix.to_vec()),
            after_prefix(prefix),
            |_, _| false,
        )
    }

    /// Remove the pair under `key`.
    pub fn remove(&self, key: &[u8]) -> sled::Result<()> {
        self.retain_range(
            Bound::Included(key.to_vec()),
            Bound::Included(key.to_vec()),
            |_, _| false,
        )
        .map(|_| ())
    }

    /// Every pair of the map, sorted (snapshots, `State::export`).
    pub fn logical(&self) -> Range<'_> {
        self.range(Bound::Unbounded, Bound::Unbounded, false)
    }

    /// The trees a snapshot walks (`State::trees`): chunks, counts.
    pub fn chunk_tree(&self) -> &sled::Tree {
        &self.chunks
    }

    pub fn used_tree(&self) -> &sled::Tree {
        &self.used
    }

    /// Pairs in the tail (tests, metrics).
    pub fn tail_len(&self) -> usize {
        self.lock().pairs.len()
    }
}

impl Captured {
    /// How the snapshot writes the chunk tree (its pairs, then the tail's)
    /// and the count tree (the tail's counts in place of those it has).
    pub fn hooks(self) -> (ChunkHook, UsedHook) {
        (ChunkHook { tail: self.pairs }, UsedHook { tail: self.used })
    }
}

pub struct ChunkHook {
    tail: Vec<Pair>,
}

impl DumpHook for ChunkHook {
    fn entry(&mut self, k: &[u8], v: &[u8], out: &mut Emit<'_>) -> std::io::Result<()> {
        if is_chunk(v) {
            for (k, v) in decode(&IVec::from(v)) {
                out(&k, &v)?;
            }
            Ok(())
        } else {
            out(k, v)
        }
    }

    fn more(&mut self, out: &mut Emit<'_>) -> std::io::Result<()> {
        for (k, v) in std::mem::take(&mut self.tail) {
            out(&k, &v)?;
        }
        Ok(())
    }
}

pub struct UsedHook {
    tail: HashMap<Vec<u8>, u64>,
}

impl DumpHook for UsedHook {
    fn entry(&mut self, k: &[u8], v: &[u8], out: &mut Emit<'_>) -> std::io::Result<()> {
        let mut owner = k.to_vec();
        owner.push(0);
        match self.tail.remove(&owner) {
            Some(n) => out(k, &n.to_be_bytes()),
            None => out(k, v),
        }
    }

    fn more(&mut self, out: &mut Emit<'_>) -> std::io::Result<()> {
        let mut rest: Vec<_> = self.tail.drain().collect();
        rest.sort();
        for (owner, n) in rest {
            out(username(&owner), &n.to_be_bytes())?;
        }
        Ok(())
    }
}

impl Iterator for Range<'_> {
    type Item = sled::Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let p = self.step()?;
            let Ok(pair) = &p else { return Some(p) };
            let fresh = self
                .last
                .as_ref()
                .is_none_or(|l| (pair.0 > *l) != self.backward && pair.0 != *l);
            if fresh {
                self.last = Some(pair.0.clone());
                return Some(p);
            }
        }
    }
}

impl Range<'_> {
    fn step(&mut self) -> Option<sled::Result<Pair>> {
        if self.chunk_next.is_none() {
            if let Err(e) = self.fill_chunk() {
                return Some(Err(e));
            }
        }
        let take_tail = match (&self.tail_next, &self.chunk_next) {
            (None, None) => return None,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(t), Some(c)) => {
                if t.0 == c.0 {
                    // Moved while this walk went on: the same pair.
                    self.chunk_next = self.chunk.next();
                    true
                } else {
                    (t.0 < c.0) != self.backward
                }
            }
        };
        Some(Ok(if take_tail {
            let p = self.tail_next.take();
            self.tail_next = self.tail.next();
            p?
        } else {
            let p = self.chunk_next.take();
            self.chunk_next = self.chunk.next();
            p?
        }))
    }

    /// Read chunks until one has a pair within the range, or none is left.
    fn fill_chunk(&mut self) -> sled::Result<()> {
        while self.chunk_next.is_none() {
            if let Some(p) = self.chunk.next() {
                self.chunk_next = Some(p);
                return Ok(());
            }
            let Some(cursor) = self.cursor.take() else {
                return Ok(());
            };
            let tree = &self.store.chunks;
            let found = if self.backward {
                tree.range::<Vec<u8>, _>((Bound::Unbounded, cursor))
                    .next_back()
            } else {
                // The chunk the range starts in may begin below it.
                let from = match &cursor {
                    Bound::Included(c) | Bound::Excluded(c) if self.first => tree
                        .range(..=c.as_slice())
                        .keys()
                        .next_back()
                        .transpose()?
                        .map(|k| Bound::Included(k.to_vec()))
                        .unwrap_or(cursor.clone()),
                    _ => cursor.clone(),
                };
                tree.range::<Vec<u8>, _>((from, Bound::Unbounded)).next()
            };
            self.first = false;
            let Some((pk, pv)) = found.transpose()? else {
                return Ok(());
            };
            let starts_below = !above(&pk, &self.lo);
            let past = if self.backward {
                false
            } else {
                !below(&pk, &self.hi)
            };
            if past {
                return Ok(());
            }
            // The walk goes on past this chunk, unless it reached the end.
            self.cursor = if self.backward {
                (!starts_below).then(|| Bound::Excluded(pk.to_vec()))
            } else {
                Some(Bound::Excluded(pk.to_vec()))
            };
            let next_pk = if self.backward {
                self.above_pk.replace(pk.clone())
            } else {
                self.store.chunk_after(&pk)?
            };
            let mut pairs: Vec<Pair> = owned(pairs_of(pk, pv), next_pk.as_deref())
                .into_iter()
                .filter(|(k, _)| above(k, &self.lo) && below(k, &self.hi))
                .collect();
            if self.backward {
                pairs.reverse();
            }
            self.chunk = pairs.into_iter();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::tracked::Undo;
    use std::cell::Cell;
    use std::sync::Arc;

    thread_local! {
        /// Pieces `write_pieces` writes before it stops (a crash).
        static PIECES_LEFT: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Whether `write_pieces` stops after the piece it just wrote.
    pub(super) fn stop_here() -> bool {
        PIECES_LEFT.with(|c| match c.get() {
            Some(n) if n <= 1 => {
                c.set(None);
                true
            }
            Some(n) => {
                c.set(Some(n - 1));
                false
            }
            None => false,
        })
    }

    fn store() -> (tempfile::TempDir, sled::Db, ArchiveStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let undo = Arc::new(Undo::default());
        let s = open(&db, &undo);
        (dir, db, s)
    }

    fn open(db: &sled::Db, undo: &Arc<Undo>) -> ArchiveStore {
        ArchiveStore::open(
            db,
            Tracked::new(db.open_tree("archive").unwrap(), 0, undo.clone()),
            Tracked::new(db.open_tree("archive_used").unwrap(), 1, undo.clone()),
        )
        .unwrap()
    }

    fn k(user: &str, n: u64) -> Vec<u8> {
        let mut k = user.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(&n.to_be_bytes());
        k
    }

    fn all(r: Range<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        r.map(|p| p.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A model: the same operations on a BTreeMap.
    #[test]
    fn the_store_reads_as_a_sorted_map_through_appends_moves_and_edits() {
        let (_d, db, s) = store();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let users = ["ann", "bob", "cy", "bo"];
        let mut n = 1000u64;
        for round in 0..40u64 {
            for (i, u) in users.iter().enumerate() {
                for _ in 0..(round % 7 + i as u64) {
                    n += 3;
                    let v = format!("msg {n} of {u}").into_bytes();
                    s.append(k(u, n), v.clone()).unwrap();
                    model.insert(k(u, n), v);
                }
            }
            s.end_append().unwrap();
            if round % 9 == 4 {
                // An edit: replace one, insert one inside a chunk, remove some.
                let key = model.keys().nth(model.len() / 2).unwrap().clone();
                s.insert(&key, b"replaced").unwrap();
                model.insert(key, b"replaced".to_vec());
                let inside = k("bob", 1001 + round);
                s.insert(&inside, b"inside").unwrap();
                model.insert(inside, b"inside".to_vec());
                let lo = k("ann", 0);
                let hi = k("ann", 1000 + round * 40);
                let gone = s
                    .retain_range(
                        Bound::Included(lo.clone()),
                        Bound::Excluded(hi.clone()),
                        |_, v| v.len() % 2 == 0,
                    )
                    .unwrap();
                let before = model.len();
                model.retain(|key, v| !(key >= &lo && key < &hi) || v.len() % 2 == 0);
                assert_eq!(gone, before - model.len());
            }
            assert_eq!(
                all(s.logical()),
                model.clone().into_iter().collect::<Vec<_>>()
            );
            // The applying thread's lookups, which skip the chunks past
            // the greatest key they hold, agree with the model: keys there,
            // keys never there, keys removed.
            for u in users {
                let (lo, hi) = (k(u, 0), k(u, u64::MAX));
                for probe in (990..n + 5).step_by(7) {
                    let key = k(u, probe);
                    assert_eq!(
                        s.get_applying(&key, &lo, &hi).unwrap().map(|v| v.to_vec()),
                        model.get(&key).cloned(),
                        "{u} {probe}"
                    );
                }
            }
        }
        // Ranges both ways, bounds of each kind.
        for u in users {
            let lo = k(u, 1500);
            let hi = k(u, 4000);
            let want: Vec<_> = model
                .range(lo.clone()..hi.clone())
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect();
            assert_eq!(
                all(s.range(
                    Bound::Included(lo.clone()),
                    Bound::Excluded(hi.clone()),
                    false
                )),
                want
            );
            let mut back = want.clone();
            back.reverse();
            assert_eq!(
                all(s.range(Bound::Included(lo), Bound::Excluded(hi), true)),
                back
            );
            let p = format!("{u}\0").into_bytes();
            let want: Vec<_> = model
                .iter()
                .filter(|(key, _)| key.starts_with(&p))
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect();
            assert_eq!(all(s.scan_prefix(&p)), want);
            for (key, v) in &want {
                assert_eq!(s.get(key).unwrap().as_deref(), Some(v.as_slice()));
            }
        }
        assert!(s.tail_len() > 0, "some pairs are still in the tail");
        assert!(
            db.open_tree("archive").unwrap().len() < model.len() / 4,
            "chunks hold many pairs each"
        );
        // Opened again: the same map.
        drop(s);
        let s = open(&db, &Arc::new(Undo::default()));
        assert_eq!(all(s.logical()), model.into_iter().collect::<Vec<_>>());
    }

    /// The applying thread's lookups skip the chunks for keys past a
    /// region's floor that were never moved there: with keys appended out
    /// of order (as a cluster commits them), floors that rise, a key of
    /// another length in the region, and an edit that forgets the regions.
    #[test]
    fn lookups_that_skip_the_chunks_agree_with_the_map_for_keys_out_of_order() {
        let (_d, _db, s) = store();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let (lo, hi) = (k("ann", 0), k("ann", u64::MAX));
        let mut n = 10_000u64;
        let mut odd = Vec::new();
        for round in 0..240u64 {
            for _ in 0..9 {
                n += 5;
                s.append(k("ann", n), b"in order".to_vec()).unwrap();
                model.insert(k("ann", n), b"in order".to_vec());
            }
            // Late ones, some far behind (past what a region remembers).
            for back in [7u64, 60, 400, 1300] {
                let late = k("ann", n - back * 5 + 1 + round % 3);
                if let std::collections::btree_map::Entry::Vacant(v) = model.entry(late.clone()) {
                    v.insert(b"late".to_vec());
                    s.append(late, b"late".to_vec()).unwrap();
                }
            }
            if round == 100 {
                // A key of another length inside the region.
                odd = k("ann", n - 3);
                odd.push(7);
                s.append(odd.clone(), b"odd".to_vec()).unwrap();
                model.insert(odd.clone(), b"odd".to_vec());
            }
            s.end_append().unwrap();
            if round == 170 {
                let gone = k("ann", n - 50);
                s.remove(&gone).unwrap();
                model.remove(&gone);
            }
            if !odd.is_empty() {
                assert_eq!(
                    s.get_applying(&odd, &lo, &hi).unwrap().map(|v| v.to_vec()),
                    Some(b"odd".to_vec()),
                    "round {round}: the key of another length"
                );
            }
            for probe in (n.saturating_sub(7000)..n + 10).step_by(3) {
                let key = k("ann", probe);
                assert_eq!(
                    s.get_applying(&key, &lo, &hi).unwrap().map(|v| v.to_vec()),
                    model.get(&key).cloned(),
                    "round {round} probe {probe}"
                );
            }
        }
        assert_eq!(all(s.logical()), model.into_iter().collect::<Vec<_>>());
    }

    /// A crash between writing an owner's chunk and removing its tail
    /// value: the pairs are in both, and read once.
    #[test]
    fn a_pair_in_the_tail_and_a_chunk_reads_once_and_is_dropped_from_the_tail() {
        let (_d, db, s) = store();
        for n in 0..10 {
            s.append(k("ann", n), b"x".to_vec()).unwrap();
        }
        s.end_append().unwrap();
        let tail_copy: Vec<_> = db
            .open_tree("archive_tail")
            .unwrap()
            .iter()
            .collect::<Result<_, _>>()
            .unwrap();
        s.fold_all().unwrap();
        assert_eq!(s.tail_len(), 0);
        let t = db.open_tree("archive_tail").unwrap();
        assert!(t.is_empty());
        for (sk, v) in tail_copy {
            t.insert(sk, v).unwrap();
        }
        assert_eq!(all(s.logical()).len(), 10);
        let s = open(&db, &Arc::new(Undo::default()));
        assert_eq!(s.tail_len(), 0, "moved pairs are dropped");
        assert!(t.is_empty(), "and their tail value removed");
        assert_eq!(all(s.logical()).len(), 10);
    }

    /// A chunk rewritten in pieces writes its later pieces first: stopped
    /// there (a crash), the old chunk still holds pairs a later piece
    /// holds; each key reads once, as the later piece has it.
    #[test]
    fn a_chunk_holds_only_the_keys_below_the_next_chunk() {
        let (_d, db, s) = store();
        let chunks = db.open_tree("archive").unwrap();
        let old: Vec<(Vec<u8>, Vec<u8>)> =
            (0..10).map(|n| (k("ann", n), b"old".to_vec())).collect();
        let new: Vec<(Vec<u8>, Vec<u8>)> =
            (5..12).map(|n| (k("ann", n), b"new".to_vec())).collect();
        let enc =
            |p: &[(Vec<u8>, Vec<u8>)]| encode(p.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        chunks.insert(k("ann", 0), enc(&old)).unwrap();
        chunks.insert(k("ann", 5), enc(&new)).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = old[..5].iter().chain(new.iter()).cloned().collect();
        assert_eq!(all(s.logical()), want);
        let mut back = want.clone();
        back.reverse();
        assert_eq!(all(s.range(Bound::Unbounded, Bound::Unbounded, true)), back);
        assert_eq!(s.get(k("ann", 7)).unwrap().as_deref(), Some(&b"new"[..]));
        // An edit rewrites the old chunk without the pairs it no longer owns.
        s.insert(&k("ann", 2), b"edited").unwrap();
        let mut want = want;
        want[2].1 = b"edited".to_vec();
        assert_eq!(all(s.logical()), want);
        assert_eq!(
            s.retain_range(
                Bound::Included(k("ann", 0)),
                Bound::Excluded(k("ann", 6)),
                |_, _| false
            )
            .unwrap(),
            6
        );
        assert_eq!(all(s.logical()), want[6..].to_vec());
    }

    /// A rewrite in pieces stopped part way (a crash): the old chunk holds
    /// pairs a later piece holds. Opening the store writes it again with
    /// only its own pairs, so a snapshot (which copies chunk values) never
    /// carries a stale pair.
    #[test]
    fn a_rewrite_stopped_part_way_is_mended_on_opening() {
        let (_d, db, s) = store();
        let chunks = db.open_tree("archive").unwrap();
        let enc =
            |p: &[(Vec<u8>, Vec<u8>)]| encode(p.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        let old: Vec<(Vec<u8>, Vec<u8>)> =
            (0..10).map(|n| (k("ann", n), b"old".to_vec())).collect();
        let new: Vec<(Vec<u8>, Vec<u8>)> =
            (5..12).map(|n| (k("ann", n), b"new".to_vec())).collect();
        chunks.insert(k("ann", 0), enc(&old)).unwrap();
        chunks.insert(k("ann", 5), enc(&new)).unwrap();
        let want = all(s.logical());
        // A whole rewrite in pieces leaves no note behind.
        let many: Vec<(Vec<u8>, Vec<u8>)> = (20..(20 + 3 * CHUNK_PAIRS as u64))
            .map(|n| (k("bob", n), b"x".to_vec()))
            .collect();
        let pieces = |s: &ArchiveStore| {
            s.write_pieces(
                many.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
                Some(&k("bob", 20)),
            )
        };
        chunks.insert(k("bob", 20), enc(&many[..1])).unwrap();
        pieces(&s).unwrap();
        assert!(db.open_tree("archive_rewriting").unwrap().is_empty());
        assert_eq!(all(s.scan_prefix(b"bob\0")), many);
        // One stopped after its first (last) piece: noted, and mended on
        // opening.
        chunks.insert(k("bob", 20), enc(&many)).unwrap();
        for (key, _) in &many[1..] {
            chunks.remove(key).unwrap();
        }
        PIECES_LEFT.with(|c| c.set(Some(1)));
        assert!(pieces(&s).is_err());
        assert!(!db.open_tree("archive_rewriting").unwrap().is_empty());
        let last_piece = chunks.last().unwrap().unwrap().0;
        assert!(last_piece.as_ref() > k("bob", 20).as_slice());
        let raw = chunks.get(k("bob", 20)).unwrap().unwrap();
        assert_eq!(decode(&raw).len(), many.len(), "the old chunk holds all");
        drop(s);
        let s = open(&db, &Arc::new(Undo::default()));
        assert!(db.open_tree("archive_rewriting").unwrap().is_empty());
        let raw = chunks.get(k("bob", 20)).unwrap().unwrap();
        assert!(decode(&raw)
            .iter()
            .all(|(key, _)| key.as_ref() < last_piece.as_ref()));
        assert_eq!(all(s.scan_prefix(b"bob\0")), many);
        drop(s);
        // Ann's rewrite had been noted, and stopped after its later piece.
        db.open_tree("archive_rewriting")
            .unwrap()
            .insert(k("ann", 0), &[])
            .unwrap();
        let s = open(&db, &Arc::new(Undo::default()));
        assert!(db.open_tree("archive_rewriting").unwrap().is_empty());
        let raw = chunks.get(k("ann", 0)).unwrap().unwrap();
        let held: Vec<Vec<u8>> = decode(&raw).into_iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(held, (0..5).map(|n| k("ann", n)).collect::<Vec<_>>());
        assert_eq!(all(s.scan_prefix(b"ann\0")), want);
    }

    /// One append's pairs span several tail values and the process stops
    /// after the first is written: the count read back on opening covers
    /// exactly the messages that value holds (each message whole), so the
    /// command applied again counts the rest once.
    #[test]
    fn a_count_goes_with_each_message_into_its_tail_value() {
        let (_d, db, s) = store();
        let body = vec![b'x'; 1000];
        let mut used = 0;
        for n in 0..20 {
            let writes = vec![
                (k("ann", 2 * n), body.clone()),
                (k("ann", 2 * n + 1), body.clone()),
            ];
            used += writes
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum::<u64>();
            s.append_message(writes, used).unwrap();
        }
        // No end_append: only the values already full were written.
        drop(s);
        let s = open(&db, &Arc::new(Undo::default()));
        let found = all(s.scan_prefix(b"ann\0"));
        assert!(!found.is_empty() && found.len() < 40, "{}", found.len());
        assert_eq!(found.len() % 2, 0, "a message is never split across values");
        let bytes: u64 = found.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        assert_eq!(s.used(b"ann\0").unwrap(), bytes);
        drop(s);

        // A message larger than a value, at the end of an append: it and
        // its count are one value, lost or kept together.
        let (_d, db, s) = store();
        let small = vec![(k("bob", 1), b"x".to_vec())];
        let n1 = (small[0].0.len() + 1) as u64;
        s.append_message(small, n1).unwrap();
        s.end_append().unwrap();
        let big = vec![(k("bob", 2), vec![b'y'; 7 << 10])];
        let n2 = n1 + (big[0].0.len() + big[0].1.len()) as u64;
        s.append_message(big, n2).unwrap();
        s.end_append().unwrap();
        drop(s);
        let t = db.open_tree("archive_tail").unwrap();
        let (last, _) = t.last().unwrap().unwrap();
        t.remove(last).unwrap();
        let s = open(&db, &Arc::new(Undo::default()));
        let found = all(s.scan_prefix(b"bob\0"));
        let bytes: u64 = found.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        assert_eq!(found.len(), 1);
        assert_eq!(s.used(b"bob\0").unwrap(), bytes);
    }

    /// The owners' byte counts go with their pairs: read back after a
    /// restart, from the tail before a move and from `archive_used` after.
    #[test]
    fn counts_survive_a_restart_before_and_after_a_move() {
        let (_d, db, s) = store();
        for n in 0..10 {
            s.append(k("ann", n), b"x".to_vec()).unwrap();
        }
        s.note_used(b"ann\0", 1234);
        s.end_append().unwrap();
        drop(s);
        let s = open(&db, &Arc::new(Undo::default()));
        assert_eq!(s.used(b"ann\0").unwrap(), 1234);
        assert_eq!(s.tail_len(), 10);
        s.fold_all().unwrap();
        assert_eq!(s.tail_len(), 0);
        assert!(db.open_tree("archive_tail").unwrap().is_empty());
        drop(s);
        let s = open(&db, &Arc::new(Undo::default()));
        assert_eq!(s.used(b"ann\0").unwrap(), 1234);
        assert_eq!(all(s.scan_prefix(b"ann\0")).len(), 10);
        assert_eq!(s.used_all().unwrap(), vec![(b"ann".to_vec(), 1234)]);
    }

    /// Values written one pair each (an earlier version, a snapshot) read
    /// as they are, and appends after them fill chunks.
    #[test]
    fn pairs_stored_one_per_value_read_and_merge() {
        let (_d, db, s) = store();
        let chunks = db.open_tree("archive").unwrap();
        for n in 0..5 {
            chunks
                .insert(k("ann", n), format!("old {n}").into_bytes())
                .unwrap();
        }
        for n in 5..(5 + FOLD_AT as u64) {
            s.append(k("ann", n), format!("new {n}").into_bytes())
                .unwrap();
        }
        s.end_append().unwrap();
        assert_eq!(s.tail_len(), 0);
        let got = all(s.scan_prefix(b"ann\0"));
        assert_eq!(got.len(), 5 + FOLD_AT);
        assert_eq!(got[4].1, b"old 4");
        assert_eq!(got[5].1, b"new 5");
        assert!(chunks.len() < 10);
    }
}
