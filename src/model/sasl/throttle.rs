//! Slows down repeated authentication failures from one address
//! (RFC 6120 §13.1 asks servers to resist dictionary attacks).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(4);

#[derive(Default)]
pub struct AuthThrottle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// In-band registrations per address: (count, window start).
    registrations: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// The window of the per-address registration limit.
const REGISTRATION_WINDOW: Duration = Duration::from_secs(3600);

impl AuthThrottle {
    /// Record a failure and return how long to wait before answering it:
    /// nothing for the first, then 250 ms more for each further one.
    pub fn fail(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (_, t)| now.duration_since(*t) < WINDOW);
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > WINDOW {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        (STEP * (entry.0 - 1)).min(MAX_DELAY)
    }

    /// May `ip` register one more account (at most `per_hour` an hour)?
    pub fn may_register(&self, ip: IpAddr, per_hour: u32) -> bool {
        let now = Instant::now();
        let map = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).is_none_or(|(n, since)| {
            *n < per_hour || now.duration_since(*since) >= REGISTRATION_WINDOW
        })
    }

    /// `ip` registered an account.
    pub fn registered(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            map.retain(|_, (_, t)| now.duration_since(*t) < REGISTRATION_WINDOW);
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= REGISTRATION_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    pub fn succeed(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&ip);
    }
}
