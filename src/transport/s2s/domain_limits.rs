//! Limits per remote domain on inbound server-to-server streams (RFC 6120
//! §13.12: a server limits what one peer can make it do), whatever number
//! of links the domain spreads its traffic over:
//! - `[s2s] max_links_per_domain`: streams one remote domain may have
//!   authenticated into this node at once; one more ends with
//!   `<policy-violation/>`;
//! - `[s2s] stanzas_per_sec_per_domain`: stanzas per second from one
//!   remote domain over all its links, with bursts of twice that; past it
//!   the links' reading pauses (TCP pushes back; nothing is dropped).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::base::rate_limit::RateLimit;

#[derive(Default)]
pub struct DomainLimits {
    links: Arc<Mutex<HashMap<String, usize>>>,
    rates: Mutex<HashMap<String, RateLimit>>,
}

/// One authenticated inbound stream of a domain; released when dropped.
pub struct LinkGuard {
    links: Arc<Mutex<HashMap<String, usize>>>,
    domain: String,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = links.get_mut(&self.domain) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                links.remove(&self.domain);
            }
        }
    }
}

impl DomainLimits {
    /// Count one more authenticated stream of `domain`, if it has fewer
    /// than `max` (0: no limit).
    pub fn link(&self, domain: &str, max: usize) -> Option<LinkGuard> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let n = links.entry(domain.to_string()).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(LinkGuard {
            links: self.links.clone(),
            domain: domain.to_string(),
        })
    }

    /// Streams of `domain` authenticated here now.
    pub fn links_of(&self, domain: &str) -> usize {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(domain).copied().unwrap_or(0)
    }

    /// Take one stanza of `domain` from its budget of `per_sec` (0: no
    /// limit): how long its link should pause first, if at all.
    pub fn pace(&self, domain: &str, per_sec: u64) -> Option<Duration> {
        if per_sec == 0 {
            return None;
        }
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        if rates.len() > 10_000 {
            // Forget domains whose bucket has refilled (a fresh bucket is
            // a full one anyway); one still in debt keeps its debt.
            rates.retain(|_, r| !r.is_full());
        }
        rates
            .entry(domain.to_string())
            .or_insert_with(|| RateLimit::new(per_sec, per_sec * 2))
            .debt(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_counted_per_domain_and_released() {
        let l = DomainLimits::default();
        let a = l.link("a.example", 2).expect("first");
        let b = l.link("a.example", 2).expect("second");
        assert!(l.link("a.example", 2).is_none());
        let _c = l.link("b.example", 2).expect("another domain");
        drop(a);
        let _d = l.link("a.example", 2).expect("one was released");
        drop(b);
        assert_eq!(l.links_of("a.example"), 1);
        assert!(l.link("a.example", 0).is_some(), "0 is no limit");
    }

    #[tokio::test]
    async fn stanzas_share_one_budget_per_domain() {
        let l = DomainLimits::default();
        // A burst of twice the rate passes; then each stanza waits.
        for _ in 0..20 {
            assert_eq!(l.pace("a.example", 10), None);
        }
        assert!(l.pace("a.example", 10).is_some());
        assert_eq!(l.pace("b.example", 10), None, "another domain");
        assert_eq!(l.pace("a.example", 0), None, "0 is no limit");
    }
}
