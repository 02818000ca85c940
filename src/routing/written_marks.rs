//! Whether a message a node died holding had reached its client, told by
//! the client's failed resume (XEP-0198 §5: the `h` of `<resume/>`).
//!
//! A node that takes a relayed message for a session with resumption on
//! tells the sender, before it writes the message, which stanza of the
//! session it will be (`starling_cluster::Marker`: the session's
//! resumption id and the stanza's number, the count `h` acknowledges).
//! Should that node die after the write and before its answer, the sender
//! gets the message back *with* those marks. Routing it again would be a
//! duplicate if the client had it; taking it as delivered, a loss if not.
//! The client decides: cut off, it tries to resume on another node; the
//! session died with its node, so the resume fails, but its `h` says how
//! many of the session's stanzas it handled. The node that answered
//! `<failed/>` tells every node (`route::Relay::ResumeFailed`), each keeps
//! it here a while ([`KEEP`]), and the sender settles the message:
//!
//! - some mark's number is within its session's `h`: the client has it;
//!   answered as owned, not routed again;
//! - every mark's session has an `h` below it: routed again;
//! - no resume attempt heard of within [`VERDICT_WAIT`] (the client did
//!   not come back, or came back without resumption, or through a node of
//!   an older version): routed again, and the client may then see it
//!   twice, as before marks.
//!
//! The node may also be back before it is found dead (a crash and a quick
//! restart): the sender then sends it the message again, with its marks.
//! The node's new life, which never saw it, answers at once: owned if a
//! verdict already says the client had it, refused (back to the sender,
//! marks and all, which waits for the verdict as above) if none is heard
//! of yet, and delivers it if the client did not have it
//! (`route::serve_relays`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use starling_cluster::Mark;
use tokio::sync::Notify;

/// How long a failed resume's `h` is kept.
pub const KEEP: Duration = Duration::from_secs(600);
/// Failed resumes kept at most (the oldest go first).
const MAX: usize = 65_536;
/// How long a message given back with marks waits to hear of its
/// client's resume attempt (a client cut off by a dead node reconnects
/// within seconds, and a resume looks for its session for about 5.5 s;
/// the node's death is noticed, and the message given back, after
/// several). Its sender's `<a/>` waits meanwhile.
pub const VERDICT_WAIT: Duration = Duration::from_secs(10);

/// The failed resumes heard of: (user, resumption id) -> `h`.
#[derive(Default)]
pub struct Verdicts {
    seen: Mutex<Seen>,
    news: Notify,
}

#[derive(Default)]
struct Seen {
    by_session: HashMap<(String, String), u32>,
    /// When each was first heard of, oldest first: expiry and the bound.
    order: VecDeque<(Instant, (String, String))>,
}

/// Stanza `number` is within `h` (both count from the session's start
/// and wrap at 2^32, XEP-0198 §5).
fn within(number: u64, h: u32) -> bool {
    h.wrapping_sub(number as u32) < 1 << 31
}

impl Verdicts {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `user`'s client tried to resume `session` with `h`, and the
    /// session was nowhere.
    pub fn record(&self, user: &str, session: &str, h: u32) {
        let mut seen = self.lock();
        let now = Instant::now();
        while let Some((at, _)) = seen.order.front() {
            if now.duration_since(*at) < KEEP && seen.order.len() < MAX {
                break;
            }
            if let Some((_, key)) = seen.order.pop_front() {
                seen.by_session.remove(&key);
            }
        }
        let key = (user.to_string(), session.to_string());
        if seen.by_session.insert(key.clone(), h).is_none() {
            seen.order.push_back((now, key));
        }
        drop(seen);
        self.news.notify_waiters();
    }

    /// Whether `user`'s client had the stanza marked `marks`: `None` while
    /// some mark's session has not been heard of.
    pub fn reached(&self, user: &str, marks: &[Mark]) -> Option<bool> {
        let seen = self.lock();
        let mut unknown = false;
        for m in marks {
            match seen.by_session.get(&(user.to_string(), m.session.clone())) {
                Some(h) if within(m.number, *h) => return Some(true),
                Some(_) => {}
                None => unknown = true,
            }
        }
        (!unknown).then_some(false)
    }

    /// [`Self::reached`], waiting up to `wait` for the sessions to be
    /// heard of; no longer once `stop` is set (the node is stopping).
    pub async fn reached_within(
        &self,
        user: &str,
        marks: &[Mark],
        wait: Duration,
        stop: &AtomicBool,
    ) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let news = self.news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            if let Some(r) = self.reached(user, marks) {
                return Some(r);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || stop.load(Ordering::Acquire) {
                return None;
            }
            let look = deadline.min(now + Duration::from_millis(250));
            let _ = tokio::time::timeout_at(look, news).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(session: &str, number: u64) -> Mark {
        Mark {
            session: session.into(),
            number,
        }
    }

    #[test]
    fn a_stanza_within_h_reached_its_client() {
        let v = Verdicts::default();
        assert_eq!(v.reached("u1", &[mark("s1", 5)]), None, "not heard of yet");
        v.record("u1", "s1", 5);
        assert_eq!(v.reached("u1", &[mark("s1", 5)]), Some(true));
        assert_eq!(v.reached("u1", &[mark("s1", 6)]), Some(false));
        // Another user's resume says nothing about this user's session,
        // and does not hide it.
        assert_eq!(v.reached("u2", &[mark("s1", 5)]), None);
        v.record("u2", "s1", 0);
        assert_eq!(v.reached("u1", &[mark("s1", 5)]), Some(true));
        // One session of several had it: delivered.
        assert_eq!(v.reached("u1", &[mark("s9", 1), mark("s1", 2)]), Some(true));
        assert_eq!(v.reached("u1", &[mark("s9", 1), mark("s1", 7)]), None);
    }

    #[test]
    fn numbers_wrap_at_32_bits() {
        assert!(within(u64::from(u32::MAX), 2), "h wrapped past it");
        assert!(!within(3, u32::MAX), "3 after a wrap is not within h");
        assert!(within(0, 0));
    }

    #[tokio::test]
    async fn a_waiting_message_hears_of_the_resume() {
        let v = std::sync::Arc::new(Verdicts::default());
        let w = v.clone();
        let waiting = tokio::spawn(async move {
            w.reached_within(
                "u1",
                &[mark("s1", 3)],
                Duration::from_secs(10),
                &AtomicBool::new(false),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        v.record("u1", "s1", 4);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the record")
            .expect("task");
        assert_eq!(got, Some(true));
        let none = v
            .reached_within(
                "u1",
                &[mark("s2", 1)],
                Duration::from_millis(50),
                &AtomicBool::new(false),
            )
            .await;
        assert_eq!(none, None, "never heard of: no verdict");
        // A stopping node does not wait.
        let started = std::time::Instant::now();
        let stopping = v
            .reached_within(
                "u1",
                &[mark("s2", 1)],
                Duration::from_secs(30),
                &AtomicBool::new(true),
            )
            .await;
        assert_eq!(stopping, None);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
