//! A token bucket over inbound bytes: the per-connection rate limit of
//! client and server-to-server streams (RFC 6120 §13.12: a server limits
//! what one connection may make it do).

use std::time::Duration;

/// A token bucket over inbound bytes (the per-connection rate limit).
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: tokio::time::Instant,
}

impl RateLimit {
    pub fn new(rate: u64, burst: u64) -> Self {
        RateLimit {
            rate: rate as f64,
            burst: burst.max(rate) as f64,
            tokens: burst.max(rate) as f64,
            last: tokio::time::Instant::now(),
        }
    }

    /// Take `n` tokens if the bucket holds them, without waiting: false
    /// means over the rate (a group-chat occupant's messages).
    pub fn try_take(&mut self, n: f64) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// Charge `bytes`; sleeps while the bucket is in debt, which stops
    /// reading and lets TCP push back on the client.
    pub async fn charge(&mut self, bytes: usize) {
        if let Some(wait) = self.debt(bytes as f64) {
            // Boxed: a timer is large, and only a throttled client needs one.
            Box::pin(tokio::time::sleep(wait)).await;
        }
    }

    /// Whether the bucket has refilled to its burst (nothing owed, nothing
    /// to remember).
    pub fn is_full(&self) -> bool {
        let now = tokio::time::Instant::now();
        self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate >= self.burst
    }

    /// Charge `n` without waiting: how long until the bucket is out of
    /// debt, if it is in debt now (a bucket shared by several readers).
    pub fn debt(&mut self, n: f64) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= n;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}
