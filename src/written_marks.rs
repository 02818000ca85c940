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
//!   not come back, or came back without resumption): routed again, and
//!   the client may then see it twice, as before marks.

use std::collections::HashMap;
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
/// within seconds; the node's death is noticed, and the message given
/// back, after several).
pub const VERDICT_WAIT: Duration = Duration::from_secs(20);

/// The failed resumes heard of: resumption id -> (user, `h`).
#[derive(Default)]
pub struct Verdicts {
    seen: Mutex<HashMap<String, Verdict>>,
    news: Notify,
}

struct Verdict {
    user: String,
    h: u32,
    at: Instant,
}

/// Stanza `number` is within `h` (both count from the session's start
/// and wrap at 2^32, XEP-0198 §5).
fn within(number: u64, h: u32) -> bool {
    h.wrapping_sub(number as u32) < 1 << 31
}

impl Verdicts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Verdict>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `user`'s client tried to resume `session` with `h`, and the
    /// session was nowhere.
    pub fn record(&self, user: &str, session: &str, h: u32) {
        let mut seen = self.lock();
        let now = Instant::now();
        seen.retain(|_, v| now.duration_since(v.at) < KEEP);
        if seen.len() >= MAX {
            if let Some(oldest) = seen
                .iter()
                .min_by_key(|(_, v)| v.at)
                .map(|(k, _)| k.clone())
            {
                seen.remove(&oldest);
            }
        }
        seen.insert(
            session.to_string(),
            Verdict {
                user: user.to_string(),
                h,
                at: now,
            },
        );
        drop(seen);
        self.news.notify_waiters();
    }

    /// Whether `user`'s client had the stanza marked `marks`: `None` while
    /// some mark's session has not been heard of.
    pub fn reached(&self, user: &str, marks: &[Mark]) -> Option<bool> {
        let seen = self.lock();
        let mut unknown = false;
        for m in marks {
            match seen.get(&m.session).filter(|v| v.user == user) {
                Some(v) if within(m.number, v.h) => return Some(true),
                Some(_) => {}
                None => unknown = true,
            }
        }
        (!unknown).then_some(false)
    }

    /// [`Self::reached`], waiting up to `wait` for the sessions to be
    /// heard of.
    pub async fn reached_within(&self, user: &str, marks: &[Mark], wait: Duration) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let news = self.news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            if let Some(r) = self.reached(user, marks) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, news).await.is_err() {
                return self.reached(user, marks);
            }
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
        // Another user's resume says nothing about this user's session.
        assert_eq!(v.reached("u2", &[mark("s1", 5)]), None);
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
            w.reached_within("u1", &[mark("s1", 3)], Duration::from_secs(10))
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
            .reached_within("u1", &[mark("s2", 1)], Duration::from_millis(50))
            .await;
        assert_eq!(none, None, "never heard of: no verdict");
    }
}
