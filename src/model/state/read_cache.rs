//! Per-user records read on every message (sessions, whether a blocklist
//! is empty, archive preferences), kept decoded in memory for readers on
//! any thread. Readers fill it; the thread that applies commands empties a
//! key after it changed the records behind it. A reader keeps what it read
//! only if no change came after it began reading (the generation), so a
//! value read before a change is never kept past it. A read that failed is
//! not kept.
//!
//! Keys can come from other servers (a probe or a message for a made-up
//! local JID), so the cache is bounded by entries and by the bytes of its
//! keys, and emptied when either is reached: it is only a cache.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

pub struct ReadCache<V> {
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    generation: u64,
    key_bytes: usize,
    by_key: HashMap<String, V>,
}

impl<V> Default for ReadCache<V> {
    fn default() -> Self {
        ReadCache {
            inner: Mutex::new(Inner {
                generation: 0,
                key_bytes: 0,
                by_key: HashMap::new(),
            }),
        }
    }
}

impl<V: Clone> ReadCache<V> {
    /// Keys kept at most, and bytes of keys.
    const MAX: usize = 1 << 16;
    const MAX_KEY_BYTES: usize = 4 << 20;

    fn lock(&self) -> MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value for `key`, from memory or else from `read` (kept if it
    /// succeeded and nothing changed meanwhile).
    pub fn get_or_read<E>(&self, key: &str, read: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        let generation = {
            let inner = self.lock();
            if let Some(v) = inner.by_key.get(key) {
                return Ok(v.clone());
            }
            inner.generation
        };
        let v = read()?;
        let mut inner = self.lock();
        if inner.generation == generation {
            if inner.by_key.len() >= Self::MAX || inner.key_bytes + key.len() > Self::MAX_KEY_BYTES
            {
                inner.by_key.clear();
                inner.key_bytes = 0;
            }
            if inner.by_key.insert(key.to_string(), v.clone()).is_none() {
                inner.key_bytes += key.len();
            }
        }
        Ok(v)
    }

    /// The records behind `key` changed (None: any may have). Called after
    /// the change is written.
    pub fn changed(&self, key: Option<&str>) {
        let mut inner = self.lock();
        inner.generation += 1;
        match key {
            Some(k) => {
                if inner.by_key.remove(k).is_some() {
                    inner.key_bytes -= k.len();
                }
            }
            None => {
                inner.by_key.clear();
                inner.key_bytes = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_key_bytes_and_failed_reads_are_not_kept() {
        let c: ReadCache<u32> = ReadCache::default();
        let big = "x".repeat(1 << 20);
        for i in 0..10 {
            let k = format!("{i}{big}");
            assert_eq!(c.get_or_read::<()>(&k, || Ok(i)), Ok(i));
            assert!(c.lock().key_bytes <= ReadCache::<u32>::MAX_KEY_BYTES);
        }
        assert!(c.lock().by_key.len() < 10);
        assert_eq!(c.get_or_read("a", || Err("broken")), Err("broken"));
        assert_eq!(c.get_or_read::<()>("a", || Ok(7)), Ok(7));
        assert_eq!(c.get_or_read::<()>("a", || Ok(8)), Ok(7));
        c.changed(Some("a"));
        assert_eq!(c.get_or_read::<()>("a", || Ok(8)), Ok(8));
    }
}
