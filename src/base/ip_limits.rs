//! Per-address connection and login rate limits, counted across the
//! cluster (approximately): each node counts what it admits per client
//! address in one-minute windows, and tells the other nodes its counts
//! over the mesh every second (`Relay::IpCounts`); a node admits one more
//! when its own count plus the others' last reported counts stay within
//! the limit. The estimate over the last minute is the current window
//! plus the part of the previous one still inside it (a sliding window).
//!
//! Only addresses with a noticeable count are reported (a quarter of the
//! limit, at least 2), at most [`MAX_REPORTED`] of them: an address that
//! spreads a few connections over many nodes may get somewhat more than
//! the limit, which is what "approximate" buys. RFC 6120 §13.12 asks a
//! server to limit what one party can make it do.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The window length, seconds.
pub const WINDOW_SECS: u64 = 60;
/// At most this many addresses per report.
pub const MAX_REPORTED: usize = 4096;
/// Other nodes' reports older than this many windows are ignored.
const STALE_WINDOWS: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connection,
    Login,
}

/// Events admitted from one address in one window.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub connections: u32,
    pub logins: u32,
}

impl Counts {
    fn get(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Connection => self.connections,
            Kind::Login => self.logins,
        }
    }

    fn bump(&mut self, kind: Kind) {
        match kind {
            Kind::Connection => self.connections = self.connections.saturating_add(1),
            Kind::Login => self.logins = self.logins.saturating_add(1),
        }
    }
}

/// What a node reports: its own counts in window `window` and the one
/// before, for the addresses worth reporting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub window: u64,
    pub current: Vec<(IpAddr, Counts)>,
    pub previous: Vec<(IpAddr, Counts)>,
}

/// Another node's last report, indexed.
struct Other {
    window: u64,
    current: HashMap<IpAddr, Counts>,
    previous: HashMap<IpAddr, Counts>,
}

#[derive(Default)]
struct Inner {
    window: u64,
    current: HashMap<IpAddr, Counts>,
    previous: HashMap<IpAddr, Counts>,
    /// Other nodes' last reports.
    others: HashMap<u64, Other>,
}

/// The address an event counts for: IPv6 by /64 (one host's usual share;
/// per /128 a host would have 2^64 addresses to spread over).
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl Inner {
    /// Move to `window`, forgetting what fell out of the last minute.
    fn roll(&mut self, window: u64) {
        if window == self.window {
            return;
        }
        self.previous = if window == self.window + 1 {
            std::mem::take(&mut self.current)
        } else {
            HashMap::new()
        };
        self.current.clear();
        self.window = window;
        // A node that stopped reporting (gone, or nothing to tell) is
        // forgotten once its last report is stale.
        self.others
            .retain(|_, r| r.window + STALE_WINDOWS >= window);
    }

    /// Admitted events of `kind` from `ip` in the current and previous
    /// windows, this node's and the others' last reports summed.
    fn totals(&self, ip: IpAddr, kind: Kind) -> (u64, u64) {
        let mut cur = self.current.get(&ip).map_or(0, |c| c.get(kind)) as u64;
        let mut prev = self.previous.get(&ip).map_or(0, |c| c.get(kind)) as u64;
        for r in self.others.values() {
            let find =
                |map: &HashMap<IpAddr, Counts>| map.get(&ip).map_or(0, |c| c.get(kind) as u64);
            if r.window == self.window {
                cur += find(&r.current);
                prev += find(&r.previous);
            } else if r.window + 1 == self.window {
                prev += find(&r.current);
            }
        }
        (cur, prev)
    }
}

/// The per-address counters of this node and what the others reported.
#[derive(Default)]
pub struct IpLimits {
    inner: Mutex<Inner>,
}

impl IpLimits {
    /// Admit one event of `kind` from `ip` at unix time `now_ms` if the
    /// cluster-wide estimate for the last minute stays within `limit`
    /// (0: no limit); an admitted event is counted, a refused one is not.
    pub fn admit(&self, ip: IpAddr, kind: Kind, limit: u32, now_ms: u64) -> bool {
        if limit == 0 || ip.is_unspecified() {
            return true;
        }
        let ip = key(ip);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.roll(now_ms / 1000 / WINDOW_SECS);
        let (cur, prev) = inner.totals(ip, kind);
        // The previous window's share still inside the last minute.
        let into = (now_ms % (WINDOW_SECS * 1000)) as f64 / (WINDOW_SECS * 1000) as f64;
        let estimate = cur as f64 + prev as f64 * (1.0 - into);
        if estimate + 1.0 > limit as f64 {
            return false;
        }
        inner.current.entry(ip).or_default().bump(kind);
        true
    }

    /// This node's report for the others, if it has anything worth
    /// reporting for limits `connections` and `logins` (per minute).
    pub fn report(&self, connections: u32, logins: u32, now_ms: u64) -> Option<Report> {
        let threshold = |limit: u32| (limit / 4).max(2);
        let worth = |c: &Counts| {
            (connections > 0 && c.connections >= threshold(connections))
                || (logins > 0 && c.logins >= threshold(logins))
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.roll(now_ms / 1000 / WINDOW_SECS);
        let pick = |map: &HashMap<IpAddr, Counts>| {
            let mut v: Vec<(IpAddr, Counts)> = map
                .iter()
                .filter(|(_, c)| worth(c))
                .map(|(a, c)| (*a, *c))
                .collect();
            v.sort_by_key(|(_, c)| std::cmp::Reverse(c.connections.max(c.logins)));
            v.truncate(MAX_REPORTED);
            v
        };
        let report = Report {
            window: inner.window,
            current: pick(&inner.current),
            previous: pick(&inner.previous),
        };
        (!report.current.is_empty() || !report.previous.is_empty()).then_some(report)
    }

    /// Take `node`'s report (it replaces the one before).
    pub fn merge(&self, node: u64, mut report: Report, now_ms: u64) {
        report.current.truncate(MAX_REPORTED);
        report.previous.truncate(MAX_REPORTED);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.roll(now_ms / 1000 / WINDOW_SECS);
        if report.window + STALE_WINDOWS < inner.window {
            return;
        }
        let other = Other {
            window: report.window,
            current: report
                .current
                .into_iter()
                .map(|(a, c)| (key(a), c))
                .collect(),
            previous: report
                .previous
                .into_iter()
                .map(|(a, c)| (key(a), c))
                .collect(),
        };
        inner.others.insert(node, other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000 * WINDOW_SECS * 1000; // the start of a window

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn the_limit_counts_this_node_and_the_others() {
        let a = IpLimits::default();
        let b = IpLimits::default();
        for i in 0..5 {
            assert!(a.admit(ip(1), Kind::Connection, 8, T0 + i));
        }
        // Node b hears of a's 5, and admits 3 more, then refuses.
        b.merge(
            1,
            a.report(8, 0, T0 + 10).expect("worth reporting"),
            T0 + 10,
        );
        for i in 0..3 {
            assert!(b.admit(ip(1), Kind::Connection, 8, T0 + 20 + i));
        }
        assert!(!b.admit(ip(1), Kind::Connection, 8, T0 + 30));
        // Another address, and logins, are counted apart.
        assert!(b.admit(ip(2), Kind::Connection, 8, T0 + 31));
        assert!(b.admit(ip(1), Kind::Login, 8, T0 + 32));
        // 0 is no limit.
        assert!(b.admit(ip(1), Kind::Connection, 0, T0 + 33));
    }

    #[test]
    fn the_previous_minute_fades_out() {
        let a = IpLimits::default();
        for i in 0..4 {
            assert!(a.admit(ip(1), Kind::Login, 4, T0 + i));
        }
        assert!(!a.admit(ip(1), Kind::Login, 4, T0 + 100));
        // Half-way into the next window half of the previous one counts.
        let half = T0 + WINDOW_SECS * 1000 * 3 / 2;
        assert!(a.admit(ip(1), Kind::Login, 4, half));
        assert!(a.admit(ip(1), Kind::Login, 4, half + 1));
        assert!(!a.admit(ip(1), Kind::Login, 4, half + 2));
        // Two windows on, nothing is left.
        let later = T0 + WINDOW_SECS * 1000 * 3;
        for i in 0..4 {
            assert!(a.admit(ip(1), Kind::Login, 4, later + i));
        }
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = IpLimits::default();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_host_same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(a.admit(one, Kind::Connection, 2, T0));
        assert!(a.admit(other_host_same_64, Kind::Connection, 2, T0 + 1));
        assert!(!a.admit(one, Kind::Connection, 2, T0 + 2));
        assert!(a.admit(other_64, Kind::Connection, 2, T0 + 3));
        // No address known: not counted.
        assert!(a.admit(IpAddr::from([0, 0, 0, 0]), Kind::Connection, 1, T0 + 4));
        assert!(a.admit(IpAddr::from([0, 0, 0, 0]), Kind::Connection, 1, T0 + 5));
    }

    #[test]
    fn reports_carry_only_noticeable_addresses_and_age_out() {
        let a = IpLimits::default();
        a.admit(ip(1), Kind::Connection, 100, T0);
        assert_eq!(
            a.report(100, 0, T0 + 1),
            None,
            "one connection is not worth it"
        );
        for i in 0..30 {
            a.admit(ip(2), Kind::Connection, 100, T0 + i);
        }
        let r = a.report(100, 0, T0 + 50).expect("report");
        assert_eq!(r.current.len(), 1);
        assert_eq!(r.current[0].0, ip(2));
        // A stale report is ignored.
        let b = IpLimits::default();
        let later = T0 + WINDOW_SECS * 1000 * 5;
        b.merge(1, r, later);
        for i in 0..100 {
            assert!(b.admit(ip(2), Kind::Connection, 100, later + i));
        }
    }
}
