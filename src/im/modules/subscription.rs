//! The presence subscription state machine of RFC 6121 §3 and Appendix A:
//! how the user's server handles subscription stanzas the user sends
//! (outbound, A.2) and how the contact's server handles them on arrival
//! (inbound, A.3), including pre-approval (§3.4). Pure functions over one
//! roster item's state, so the tables can be checked row by row.

use crate::model::state::Subscription;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubKind {
    pub fn parse(t: &str) -> Option<SubKind> {
        Some(match t {
            "subscribe" => SubKind::Subscribe,
            "subscribed" => SubKind::Subscribed,
            "unsubscribe" => SubKind::Unsubscribe,
            "unsubscribed" => SubKind::Unsubscribed,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubKind::Subscribe => "subscribe",
            SubKind::Subscribed => "subscribed",
            SubKind::Unsubscribe => "unsubscribe",
            SubKind::Unsubscribed => "unsubscribed",
        }
    }
}

/// The result of processing one stanza against one item's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub sub: Subscription,
    pub approved: bool,
    /// Outbound: route the stanza to the contact. Inbound: deliver it to
    /// the user's available resources.
    pub forward: bool,
    /// Inbound only: answer on the user's behalf (auto-reply).
    pub reply: Option<SubKind>,
}

fn keep(sub: Subscription, approved: bool, forward: bool) -> Transition {
    Transition {
        sub,
        approved,
        forward,
        reply: None,
    }
}

/// RFC 6121 A.2: the user sent `kind` to the contact.
pub fn outbound(s: Subscription, approved: bool, kind: SubKind) -> Transition {
    let mut n = s;
    match kind {
        // A.2.1 / §3.1.2: always routed; sets Pending Out unless already To.
        SubKind::Subscribe => {
            if !s.to {
                n.pending_out = true;
            }
            keep(n, approved, true)
        }
        // A.2.2 / §3.3.2: clears To and Pending Out; always routed.
        SubKind::Unsubscribe => {
            n.to = false;
            n.pending_out = false;
            keep(n, approved, true)
        }
        // A.2.3 / §3.1.5, §3.4: approves a pending request, or records a
        // pre-approval (not routed) when there is none.
        SubKind::Subscribed => {
            if s.pending_in {
                n.pending_in = false;
                n.from = true;
                keep(n, false, true)
            } else if !s.from {
                keep(n, true, false)
            } else {
                keep(n, approved, false)
            }
        }
        // A.2.4 / §3.2.2: denies a pending request or cancels From; also
        // withdraws a pre-approval.
        SubKind::Unsubscribed => {
            let changed = s.pending_in || s.from;
            n.pending_in = false;
            n.from = false;
            keep(n, false, changed)
        }
    }
}

/// RFC 6121 A.3: the contact's server received `kind` from the user; `s` is
/// the contact's item for the user.
pub fn inbound(s: Subscription, approved: bool, kind: SubKind) -> Transition {
    let mut n = s;
    match kind {
        // A.3.1 / §3.1.3: already subscribed -> auto-reply "subscribed";
        // pre-approved -> approve without asking; else Pending In.
        SubKind::Subscribe => {
            if s.from {
                Transition {
                    sub: s,
                    approved,
                    forward: false,
                    reply: Some(SubKind::Subscribed),
                }
            } else if approved {
                n.from = true;
                n.pending_in = false;
                Transition {
                    sub: n,
                    approved: false,
                    forward: false,
                    reply: Some(SubKind::Subscribed),
                }
            } else if s.pending_in {
                keep(s, approved, false)
            } else {
                n.pending_in = true;
                keep(n, approved, true)
            }
        }
        // A.3.2 / §3.3.3: the user no longer wants the contact's presence.
        SubKind::Unsubscribe => {
            let changed = s.from || s.pending_in;
            n.from = false;
            n.pending_in = false;
            keep(n, approved, changed)
        }
        // A.3.3 / §3.1.6: only meaningful while the user asked (Pending Out).
        SubKind::Subscribed => {
            if s.pending_out {
                n.pending_out = false;
                n.to = true;
                keep(n, approved, true)
            } else {
                keep(s, approved, false)
            }
        }
        // A.3.4 / §3.2.3: the contact refused or cancelled.
        SubKind::Unsubscribed => {
            let changed = s.to || s.pending_out;
            n.to = false;
            n.pending_out = false;
            keep(n, approved, changed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubKind::*;

    /// The nine states of RFC 6121 A.1, by their names there.
    fn st(name: &str) -> Subscription {
        let (base, pending) = name.split_once(" + ").unwrap_or((name, ""));
        let mut s = Subscription::default();
        match base {
            "None" => {}
            "To" => s.to = true,
            "From" => s.from = true,
            "Both" => {
                s.to = true;
                s.from = true;
            }
            _ => panic!("state {name}"),
        }
        match pending {
            "" => {}
            "Pending Out" => s.pending_out = true,
            "Pending In" => s.pending_in = true,
            "Pending Out+In" => {
                s.pending_out = true;
                s.pending_in = true;
            }
            _ => panic!("state {name}"),
        }
        s
    }

    const STATES: [&str; 9] = [
        "None",
        "None + Pending Out",
        "None + Pending In",
        "None + Pending Out+In",
        "To",
        "To + Pending In",
        "From",
        "From + Pending Out",
        "Both",
    ];

    /// (stanza, existing state, new state or "", forward?)
    type Row = (SubKind, &'static str, &'static str, bool);

    /// RFC 6121 A.2 (outbound: the user's server; "forward" = route to the contact).
    const OUTBOUND: &[Row] = &[
        // A.2.1 subscribe
        (Subscribe, "None", "None + Pending Out", true),
        (Subscribe, "None + Pending Out", "", true),
        (
            Subscribe,
            "None + Pending In",
            "None + Pending Out+In",
            true,
        ),
        (Subscribe, "None + Pending Out+In", "", true),
        (Subscribe, "To", "", true),
        (Subscribe, "To + Pending In", "", true),
        (Subscribe, "From", "From + Pending Out", true),
        (Subscribe, "From + Pending Out", "", true),
        (Subscribe, "Both", "", true),
        // A.2.2 unsubscribe
        (Unsubscribe, "None", "", true),
        (Unsubscribe, "None + Pending Out", "None", true),
        (Unsubscribe, "None + Pending In", "", true),
        (
            Unsubscribe,
            "None + Pending Out+In",
            "None + Pending In",
            true,
        ),
        (Unsubscribe, "To", "None", true),
        (Unsubscribe, "To + Pending In", "None + Pending In", true),
        (Unsubscribe, "From", "", true),
        (Unsubscribe, "From + Pending Out", "From", true),
        (Unsubscribe, "Both", "From", true),
        // A.2.3 subscribed
        (Subscribed, "None", "", false),
        (Subscribed, "None + Pending Out", "", false),
        (Subscribed, "None + Pending In", "From", true),
        (
            Subscribed,
            "None + Pending Out+In",
            "From + Pending Out",
            true,
        ),
        (Subscribed, "To", "", false),
        (Subscribed, "To + Pending In", "Both", true),
        (Subscribed, "From", "", false),
        (Subscribed, "From + Pending Out", "", false),
        (Subscribed, "Both", "", false),
        // A.2.4 unsubscribed
        (Unsubscribed, "None", "", false),
        (Unsubscribed, "None + Pending Out", "", false),
        (Unsubscribed, "None + Pending In", "None", true),
        (
            Unsubscribed,
            "None + Pending Out+In",
            "None + Pending Out",
            true,
        ),
        (Unsubscribed, "To", "", false),
        (Unsubscribed, "To + Pending In", "To", true),
        (Unsubscribed, "From", "None", true),
        (
            Unsubscribed,
            "From + Pending Out",
            "None + Pending Out",
            true,
        ),
        (Unsubscribed, "Both", "To", true),
    ];

    /// RFC 6121 A.3 (inbound: the contact's server; "forward" = deliver to the contact).
    const INBOUND: &[Row] = &[
        // A.3.1 subscribe
        (Subscribe, "None", "None + Pending In", true),
        (
            Subscribe,
            "None + Pending Out",
            "None + Pending Out+In",
            true,
        ),
        (Subscribe, "None + Pending In", "", false),
        (Subscribe, "None + Pending Out+In", "", false),
        (Subscribe, "To", "To + Pending In", true),
        (Subscribe, "To + Pending In", "", false),
        (Subscribe, "From", "", false),
        (Subscribe, "From + Pending Out", "", false),
        (Subscribe, "Both", "", false),
        // A.3.2 unsubscribe
        (Unsubscribe, "None", "", false),
        (Unsubscribe, "None + Pending Out", "", false),
        (Unsubscribe, "None + Pending In", "None", true),
        (
            Unsubscribe,
            "None + Pending Out+In",
            "None + Pending Out",
            true,
        ),
        (Unsubscribe, "To", "", false),
        (Unsubscribe, "To + Pending In", "To", true),
        (Unsubscribe, "From", "None", true),
        (
            Unsubscribe,
            "From + Pending Out",
            "None + Pending Out",
            true,
        ),
        (Unsubscribe, "Both", "To", true),
        // A.3.3 subscribed
        (Subscribed, "None", "", false),
        (Subscribed, "None + Pending Out", "To", true),
        (Subscribed, "None + Pending In", "", false),
        (Subscribed, "None + Pending Out+In", "To + Pending In", true),
        (Subscribed, "To", "", false),
        (Subscribed, "To + Pending In", "", false),
        (Subscribed, "From", "", false),
        (Subscribed, "From + Pending Out", "Both", true),
        (Subscribed, "Both", "", false),
        // A.3.4 unsubscribed
        (Unsubscribed, "None", "", false),
        (Unsubscribed, "None + Pending Out", "None", true),
        (Unsubscribed, "None + Pending In", "", false),
        (
            Unsubscribed,
            "None + Pending Out+In",
            "None + Pending In",
            true,
        ),
        (Unsubscribed, "To", "None", true),
        (Unsubscribed, "To + Pending In", "None + Pending In", true),
        (Unsubscribed, "From", "", false),
        (Unsubscribed, "From + Pending Out", "From", true),
        (Unsubscribed, "Both", "From", true),
    ];

    fn check(table: &[Row], f: fn(Subscription, bool, SubKind) -> Transition, dir: &str) {
        // Every state appears once per stanza kind.
        for kind in [Subscribe, Unsubscribe, Subscribed, Unsubscribed] {
            let states: Vec<&str> = table.iter().filter(|r| r.0 == kind).map(|r| r.1).collect();
            assert_eq!(states, STATES, "{dir} {kind:?} covers every state of A.1");
        }
        for &(kind, from, to, forward) in table {
            let t = f(st(from), false, kind);
            let expect = if to.is_empty() { st(from) } else { st(to) };
            assert_eq!(t.sub, expect, "{dir} {kind:?} in {from:?}");
            assert_eq!(t.forward, forward, "{dir} {kind:?} in {from:?}: forward");
        }
    }

    #[test]
    fn outbound_table_a2() {
        check(OUTBOUND, outbound, "outbound");
    }

    #[test]
    fn inbound_table_a3() {
        check(INBOUND, inbound, "inbound");
        // Already subscribed: the server answers "subscribed" itself (§3.1.3).
        for s in ["From", "From + Pending Out", "Both"] {
            assert_eq!(
                inbound(st(s), false, Subscribe).reply,
                Some(Subscribed),
                "{s}"
            );
        }
    }

    #[test]
    fn pre_approval_section_3_4() {
        // Outbound "subscribed" with no request pending records a pre-approval
        // for None, None + Pending Out and To, and is not routed.
        for s in ["None", "None + Pending Out", "To"] {
            let t = outbound(st(s), false, Subscribed);
            assert!(t.approved && !t.forward, "{s}");
            assert_eq!(t.sub, st(s));
        }
        // A later inbound subscribe is approved without asking the user.
        for (s, after) in [
            ("None", "From"),
            ("None + Pending Out", "From + Pending Out"),
            ("To", "Both"),
        ] {
            let t = inbound(st(s), true, Subscribe);
            assert_eq!(t.sub, st(after), "{s}");
            assert!(!t.forward && !t.approved);
            assert_eq!(t.reply, Some(Subscribed));
        }
        // "unsubscribed" withdraws a pre-approval.
        assert!(!outbound(st("None"), true, Unsubscribed).approved);
    }
}
