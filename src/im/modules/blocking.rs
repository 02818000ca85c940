//! XEP-0191 Blocking Command: the blocklist, its pushes, and the check
//! every delivery makes against it.

use jid::{BareJid, Jid};

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::model::state::Command;

pub const NS: &str = "urn:xmpp:blocking";
const ERRORS_NS: &str = "urn:xmpp:blocking:errors";

pub struct Blocking;

/// Whether `user` blocks `jid`: the full JID, its bare JID or its domain
/// is on the list (XEP-0191 §3.5 matching).
pub fn blocks(ctx: &ImCtx, user: &str, jid: &str) -> bool {
    let state = &ctx.state;
    // Most users block nobody: known from memory, before any parsing.
    if !state.blocks_anyone(user) {
        return false;
    }
    let Ok(j) = Jid::new(jid) else { return false };
    state.is_blocked(user, j.as_str())
        || (j.is_full() && state.is_blocked(user, j.to_bare().as_str()))
        || state.is_blocked(user, j.domain().as_str())
}

/// The error for a stanza the user sent to someone they block (§3.6).
pub fn blocked_error(stanza: &Element) -> Element {
    let mut reply = StanzaError::new(StanzaCondition::NotAcceptable).reply_to(stanza);
    if let Some(crate::base::xml::Node::Element(err)) = reply.children.last_mut() {
        err.push_child(Element::new("blocked", ERRORS_NS));
    }
    reply
}

fn username(req: &IqRequest) -> String {
    req.user()
}

fn items(payload: &Element) -> Result<Vec<String>, StanzaError> {
    payload
        .elements()
        .filter(|e| e.is("item", NS))
        .map(|e| {
            let j = e.attr("jid").ok_or_else(|| {
                StanzaError::with_text(StanzaCondition::BadRequest, "item without jid")
            })?;
            Jid::new(j)
                .map(|j| j.to_string())
                .map_err(|_| StanzaError::new(StanzaCondition::JidMalformed))
        })
        .collect()
}

fn push(ctx: &ImCtx, user: &BareJid, payload: Element) {
    for t in crate::routing::route::resources(ctx, user) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", "block-push")
            .with_attr("to", t.jid.clone())
            .with_child(payload.clone());
        crate::routing::route::send(ctx, &t, iq, Some(crate::routing::route::Require::Blocklist));
    }
}

/// Blocking in the message pipeline (place 10): a message to someone the
/// sender blocks is refused (§3.6); one from someone the addressee blocks
/// is answered as if the account did not exist (§3.5).
impl super::hooks::MessageHook for Blocking {
    fn order(&self) -> u16 {
        10
    }

    fn outbound(
        &self,
        ctx: &ImCtx,
        from: &jid::FullJid,
        to: &Jid,
        msg: &mut Element,
        _waits: &mut super::hooks::Waits,
    ) -> super::hooks::Verdict {
        let user = ctx.config.account_of(from).unwrap_or_default();
        if msg.attr("type") != Some("error") && blocks(ctx, &user, to.as_str()) {
            return super::hooks::Verdict::Stop(Some(blocked_error(msg)));
        }
        super::hooks::Verdict::Continue
    }

    fn inbound(
        &self,
        ctx: &ImCtx,
        user: &str,
        _from: &Jid,
        msg: &mut Element,
        _waits: &mut super::hooks::Waits,
    ) -> super::hooks::Verdict {
        if !msg.attr("from").is_some_and(|f| blocks(ctx, user, f)) {
            return super::hooks::Verdict::Continue;
        }
        super::hooks::Verdict::Stop(match msg.attr("type").unwrap_or("normal") {
            "headline" | "error" => None,
            _ => crate::base::stanza_error::bounce(msg, StanzaCondition::ServiceUnavailable),
        })
    }
}

/// XEP-0377 spam and abuse reporting, inside a block.
pub const REPORTING: &str = "urn:xmpp:reporting:1";
/// Reports kept for the operators (the oldest go first).
const MAX_REPORTS: usize = 10_000;

/// Reports one block may carry.
const REPORTS_PER_BLOCK: usize = 5;

/// The reports in a `<block/>`'s items (XEP-0377 §2), from `reporter`
/// (not from temporary accounts, which anyone can make).
fn reports(payload: &Element, reporter: &str) -> Vec<crate::model::state::SpamReport> {
    let at_ms = crate::base::time::unix_now().as_millis() as u64;
    payload
        .elements()
        .filter(|e| e.is("item", NS))
        .filter_map(|item| {
            let jid = Jid::new(item.attr("jid")?).ok()?.to_string();
            let r = item.get_child("report", REPORTING)?;
            let reason = r.attr("reason").unwrap_or("urn:xmpp:reporting:spam");
            if !matches!(
                reason,
                "urn:xmpp:reporting:spam" | "urn:xmpp:reporting:abuse"
            ) {
                return None;
            }
            Some(crate::model::state::SpamReport {
                reporter: reporter.to_string(),
                jid,
                reason: reason.to_string(),
                text: r
                    .get_child("text", REPORTING)
                    .map(|t| t.text().chars().take(1024).collect())
                    .unwrap_or_default(),
                stanza_ids: r
                    .elements()
                    .filter(|s| s.name == "stanza-id")
                    .filter_map(|s| Some(format!("{} {}", s.attr("by")?, s.attr("id")?)))
                    .take(20)
                    .collect(),
                at_ms,
            })
        })
        .take(REPORTS_PER_BLOCK)
        .collect()
}

impl Module for Blocking {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec![NS, REPORTING]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![
            (IqKind::Get, Addressee::Account, NS),
            (IqKind::Set, Addressee::Account, NS),
        ]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        let ctx = req.server;
        let user = username(req);
        let bare = req.from.to_bare();
        match (req.kind, req.payload.name.as_str()) {
            (IqKind::Get, "blocklist") => {
                ctx.router
                    .update(req.from, req.session_id, |e| e.blocklist_interested = true);
                let mut list = Element::new("blocklist", NS);
                for j in ctx.state.blocklist(&user).unwrap_or_default() {
                    list.push_child(Element::new("item", NS).with_attr("jid", j));
                }
                Ok(Some(list)).into()
            }
            (IqKind::Set, "block") => {
                let jids = match items(req.payload) {
                    Ok(j) if !j.is_empty() => j,
                    Ok(_) => {
                        return Err(StanzaError::with_text(
                            StanzaCondition::BadRequest,
                            "nothing to block",
                        ))
                        .into()
                    }
                    Err(e) => return Err(e).into(),
                };
                let payload = req.payload.clone();
                let reported = if crate::model::config::is_anonymous_account(&user) {
                    Vec::new()
                } else {
                    reports(req.payload, bare.as_str())
                };
                let cmd = Command::Block {
                    username: user,
                    jids: jids.clone(),
                };
                super::commit_then(ctx, cmd, "blocklist write", move |ctx, _| {
                    // XEP-0377: recorded for the operators.
                    for report in reported {
                        tracing::info!(reporter = %report.reporter, jid = %report.jid, reason = %report.reason, "abuse report");
                        ctx.replicator.submit(&Command::SpamReport {
                            report,
                            max: MAX_REPORTS,
                        });
                    }
                    // §3.3: a blocked contact stops seeing the user's presence.
                    if let Some(a) = ctx.presence.get(&bare) {
                        for j in &jids {
                            if let Ok(b) = BareJid::new(j) {
                                a.do_send(crate::im::presence::SendUnavailable { to: b });
                            }
                        }
                    }
                    push(ctx, &bare, payload);
                    Ok(None).into()
                })
            }
            (IqKind::Set, "unblock") => {
                let jids = match items(req.payload) {
                    Ok(j) => j,
                    Err(e) => return Err(e).into(),
                };
                let payload = req.payload.clone();
                let cmd = Command::Unblock {
                    username: user,
                    jids,
                };
                super::commit_then(ctx, cmd, "blocklist write", move |ctx, _| {
                    push(ctx, &bare, payload);
                    Ok(None).into()
                })
            }
            _ => Err(StanzaError::new(StanzaCondition::BadRequest)).into(),
        }
    }
}
