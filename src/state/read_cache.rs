//! Per-user records read on every message (sessions, whether a blocklist
//! is empty, archive preferences), kept decoded in memory for readers on
//! any thread. Readers fill it; the thread that applies commands empties a
//! key after it changed the records behind it. A reader keeps what it read
//! only if no change came after it began reading (the generation), so a
//! value read before a change is never kept past it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

pub struct ReadCache<V> {
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    generation: u64,
    by_key: HashMap<String, V>,
}

impl<V> Default for ReadCache<V> {
    fn default() -> Self {
        ReadCache {
            inner: Mutex::new(Inner {
                generation: 0,
                by_key: HashMap::new(),
            }),
        }
    }
}

impl<V: Clone> ReadCache<V> {
    /// Keys kept at most (emptied when full: it is only a cache).
    const MAX: usize = 1 << 16;

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value for `key`, from memory or else from `read`.
    pub fn get_or_read(&self, key: &str, read: impl FnOnce() -> V) -> V {
        let generation = {
            let inner = self.lock();
            if let Some(v) = inner.by_key.get(key) {
                return v.clone();
            }
            inner.generation
        };
        let v = read();
        let mut inner = self.lock();
        if inner.generation == generation {
            if inner.by_key.len() >= Self::MAX {
                inner.by_key.clear();
            }
            inner.by_key.insert(key.to_string(), v.clone());
        }
        v
    }

    /// The records behind `key` changed (None: any may have). Called after
    /// the change is written.
    pub fn changed(&self, key: Option<&str>) {
        let mut inner = self.lock();
        inner.generation += 1;
        match key {
            Some(k) => {
                inner.by_key.remove(k);
            }
            None => inner.by_key.clear(),
        }
    }
}
