//! Snapshots of the replicated state taken without stopping it.
//!
//! A Raft snapshot must hold the state exactly as it was at one log index,
//! but writing out gigabytes of archive takes seconds, and the Raft driver
//! must go on applying commits meanwhile (see ARCHITECTURE.md, "Snapshots").
//! sled has no point-in-time reads, so the state keeps an undo record while
//! a snapshot is written: the first write to a key after the snapshot's
//! index saves the value the key had before. The writer, walking the trees
//! on its own thread, takes a saved value instead of the live one, and at
//! the end of each tree adds the saved keys it never met (removed before it
//! got there). Writes happen on the driver thread only, so the undo record
//! is switched on between two applies, at exactly the snapshot's index.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sled::IVec;

/// One state tree whose writes are recorded while a snapshot is made. Reads
/// go straight to sled (`Deref`); every write must use the methods here.
pub struct Tracked {
    tree: sled::Tree,
    slot: usize,
    undo: Arc<Undo>,
}

impl std::ops::Deref for Tracked {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.tree
    }
}

impl Tracked {
    pub fn new(tree: sled::Tree, slot: usize, undo: Arc<Undo>) -> Tracked {
        Tracked { tree, slot, undo }
    }

    pub fn insert<K: AsRef<[u8]>, V: Into<IVec>>(
        &self,
        key: K,
        value: V,
    ) -> sled::Result<Option<IVec>> {
        self.undo
            .before_write(self.slot, &self.tree, key.as_ref())?;
        self.tree.insert(key, value)
    }

    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        self.undo
            .before_write(self.slot, &self.tree, key.as_ref())?;
        self.tree.remove(key)
    }

    pub fn compare_and_swap<K: AsRef<[u8]>, OV: AsRef<[u8]>, NV: Into<IVec>>(
        &self,
        key: K,
        old: Option<OV>,
        new: Option<NV>,
    ) -> sled::Result<Result<(), sled::CompareAndSwapError>> {
        self.undo
            .before_write(self.slot, &self.tree, key.as_ref())?;
        self.tree.compare_and_swap(key, old, new)
    }

    pub fn update_and_fetch<K: AsRef<[u8]>, V: Into<IVec>, F: FnMut(Option<&[u8]>) -> Option<V>>(
        &self,
        key: K,
        f: F,
    ) -> sled::Result<Option<IVec>> {
        self.undo
            .before_write(self.slot, &self.tree, key.as_ref())?;
        self.tree.update_and_fetch(key, f)
    }
}

/// Where a snapshot's pairs go.
pub type Emit<'a> = dyn FnMut(&[u8], &[u8]) -> std::io::Result<()> + 'a;

/// How a tree is written into a snapshot when not as it is (the archive's
/// chunks and tail, `archive_store.rs`): each entry as it was at the
/// snapshot's index, then anything more.
pub trait DumpHook {
    fn entry(&mut self, key: &[u8], value: &[u8], out: &mut Emit<'_>) -> std::io::Result<()>;
    fn more(&mut self, out: &mut Emit<'_>) -> std::io::Result<()>;
}

/// The undo record of the snapshot being written, if one is.
#[derive(Default)]
pub struct Undo {
    active: AtomicBool,
    capture: Mutex<Option<Capture>>,
}

#[derive(Default)]
struct Capture {
    /// (tree slot, key) -> the value at the snapshot's index.
    saved: HashMap<(usize, Vec<u8>), Saved>,
    /// How far the writer has got: the tree it is in and the last key met.
    slot: usize,
    key: Option<Vec<u8>>,
    /// Cancelled (the state was replaced by another snapshot meanwhile).
    cancelled: bool,
}

struct Saved {
    before: Option<IVec>,
    /// Already written out (or past, when it did not exist at the index).
    written: bool,
}

impl Capture {
    fn passed(&self, slot: usize, key: &[u8]) -> bool {
        slot < self.slot || (slot == self.slot && self.key.as_deref().is_some_and(|k| key <= k))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("a snapshot is already being written")]
    Busy,
    #[error("the state was replaced while the snapshot was written")]
    Cancelled,
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("writing the snapshot: {0}")]
    Io(#[from] std::io::Error),
}

impl Undo {
    fn lock(&self) -> MutexGuard<'_, Option<Capture>> {
        self.capture.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn before_write(&self, slot: usize, tree: &sled::Tree, key: &[u8]) -> sled::Result<()> {
        if !self.active.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut g = self.lock();
        let Some(c) = g.as_mut() else {
            return Ok(());
        };
        let k = (slot, key.to_vec());
        if !c.saved.contains_key(&k) {
            let before = tree.get(key)?;
            let written = c.passed(slot, key);
            c.saved.insert(k, Saved { before, written });
        }
        Ok(())
    }

    /// Start recording: the state from now on is what a snapshot holds.
    /// Called on the thread that applies commands, between two of them.
    pub fn begin(&self) -> Result<(), DumpError> {
        let mut g = self.lock();
        if g.is_some() {
            return Err(DumpError::Busy);
        }
        *g = Some(Capture::default());
        self.active.store(true, Ordering::Release);
        Ok(())
    }

    /// Stop recording (the snapshot is written, or given up).
    pub fn end(&self) {
        let mut g = self.lock();
        *g = None;
        self.active.store(false, Ordering::Release);
    }

    /// The state is being replaced: a snapshot being written is void.
    pub fn cancel(&self) {
        if let Some(c) = self.lock().as_mut() {
            c.cancelled = true;
        }
    }

    /// Write `trees` (slots 0..) as they were at [`Undo::begin`] into `out`
    /// in the stream format of [`crate::model::state::snapshot`], each
    /// under its name, through its [`DumpHook`] if it has one.
    pub fn dump(
        &self,
        trees: &mut [(&str, &sled::Tree, Option<&mut dyn DumpHook>)],
        out: &mut dyn Write,
    ) -> Result<(), DumpError> {
        use super::snapshot::stream;
        out.write_all(stream::MAGIC)?;
        for (slot, (name, tree, hook)) in trees.iter_mut().enumerate() {
            stream::tree(out, name)?;
            let mut raw = |k: &[u8], v: &[u8]| stream::pair(&mut *out, k, v);
            let mut emit = |k: &[u8], v: &[u8]| -> std::io::Result<()> {
                match hook {
                    Some(h) => h.entry(k, v, &mut raw),
                    None => raw(k, v),
                }
            };
            {
                let mut g = self.lock();
                let c = g.as_mut().ok_or(DumpError::Cancelled)?;
                c.slot = slot;
                c.key = None;
            }
            for kv in tree.iter() {
                let (k, v) = kv?;
                let value = {
                    let mut g = self.lock();
                    let c = g.as_mut().ok_or(DumpError::Cancelled)?;
                    if c.cancelled {
                        return Err(DumpError::Cancelled);
                    }
                    c.key = Some(k.to_vec());
                    match c.saved.get_mut(&(slot, k.to_vec())) {
                        Some(s) => {
                            s.written = true;
                            s.before.clone()
                        }
                        None => Some(v),
                    }
                };
                if let Some(v) = value {
                    emit(&k, &v)?;
                }
            }
            // Keys that were there at the index but removed before the
            // walk reached them.
            let mut missed: Vec<(Vec<u8>, IVec)> = {
                let mut g = self.lock();
                let c = g.as_mut().ok_or(DumpError::Cancelled)?;
                let mut missed = Vec::new();
                for ((s, k), saved) in c.saved.iter_mut() {
                    if *s == slot && !saved.written {
                        saved.written = true;
                        if let Some(v) = &saved.before {
                            missed.push((k.clone(), v.clone()));
                        }
                    }
                }
                c.slot = slot + 1;
                c.key = None;
                missed
            };
            missed.sort();
            for (k, v) in missed {
                emit(&k, &v)?;
            }
            if let Some(h) = hook {
                h.more(&mut |k, v| stream::pair(&mut *out, k, v))?;
            }
        }
        stream::end(out)?;
        out.flush()?;
        let g = self.lock();
        match g.as_ref() {
            Some(c) if !c.cancelled => Ok(()),
            _ => Err(DumpError::Cancelled),
        }
    }
}
