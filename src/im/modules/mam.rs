//! XEP-0313 Message Archive Management (urn:xmpp:mam:2 and #extended):
//! a user queries their own archive (§4: the XEP-0004 form with `with`,
//! `start`, `end`, `before-id`, `after-id`, `ids`; XEP-0059 paging with
//! `max`, `after`, `before`, `index`; `flip-page`), reads its bounds
//! (§6.2 metadata) and sets what it keeps (§6.1 preferences). What goes
//! in is decided in `archive.rs`; storage is `state/archive.rs`.

use std::ops::Bound;

use jid::Jid;

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::model::state::archive::{ArchiveId, PageQuery};
use crate::model::state::{ArchivePrefs, Command};

pub const NS: &str = "urn:xmpp:mam:2";
pub const NS_EXTENDED: &str = "urn:xmpp:mam:2#extended";
const RSM: &str = "http://jabber.org/protocol/rsm";
const DATA: &str = "jabber:x:data";
const FORWARD: &str = "urn:xmpp:forward:0";
const DELAY: &str = "urn:xmpp:delay";

/// A page when the client names no size.
const DEFAULT_PAGE: usize = 50;

pub struct Mam {
    /// The archiving hook, whose writes a query waits for.
    pub archive: std::sync::Arc<super::archive::Archive>,
}

/// Does `user` archive messages with `with` (§6.1)? The per-JID lists
/// first, then the default (the user's own, else the server's).
pub fn wanted(ctx: &ImCtx, user: &str, with: &Jid) -> bool {
    // The bare JID is written out only when a list or the roster is
    // looked at (this runs for every message).
    let bare = || with.to_bare().to_string();
    let prefs = ctx.state.archive_prefs(user).ok().flatten();
    let default = match &prefs {
        Some(p) if !p.never.is_empty() || !p.always.is_empty() => {
            let bare = bare();
            if p.never.contains(&bare) {
                return false;
            }
            if p.always.contains(&bare) {
                return true;
            }
            p.default.as_str()
        }
        Some(p) => p.default.as_str(),
        None => ctx.config.mam.default.as_str(),
    };
    match default {
        "always" => true,
        "roster" => ctx
            .state
            .roster_item(user, &bare())
            .ok()
            .flatten()
            .is_some(),
        _ => false,
    }
}

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::with_text(StanzaCondition::BadRequest, text)
}

/// The values of each field of a submitted form.
fn form_fields(x: &Element) -> Vec<(String, Vec<String>)> {
    x.elements()
        .filter(|f| f.name == "field")
        .map(|f| {
            let values = f
                .elements()
                .filter(|v| v.name == "value")
                .map(|v| v.text())
                .collect();
            (f.attr("var").unwrap_or_default().to_string(), values)
        })
        .collect()
}

/// A query as the client asked it.
#[derive(Debug, Default)]
struct Asked {
    with: Option<String>,
    start: Option<u64>,
    end: Option<u64>,
    after_id: Option<u64>,
    before_id: Option<u64>,
    ids: Option<Vec<u64>>,
    max: Option<usize>,
    rsm_after: Option<u64>,
    /// `<before/>` (empty: the last page) or `<before>id</before>`.
    rsm_before: Option<Option<u64>>,
    index: Option<usize>,
    flip: bool,
}

fn one(values: &[String], var: &str) -> Result<String, StanzaError> {
    match values {
        [v] => Ok(v.trim().to_string()),
        _ => Err(bad(format!("field {var} takes one value"))),
    }
}

/// An id the client gave, as its position in the archive's commit order
/// (ranges run over positions); unknown ids are `<item-not-found/>`
/// (§5.1.2).
fn known_id(req: &IqRequest, user: &str, text: &str) -> Result<u64, StanzaError> {
    let not_found =
        || StanzaError::with_text(StanzaCondition::ItemNotFound, format!("no message {text}"));
    let id = ArchiveId::parse(text).ok_or_else(not_found)?;
    match req.server.state.archive_position(user, id) {
        Ok(Some(position)) => Ok(position),
        Ok(None) => Err(not_found()),
        Err(e) => Err(StanzaError::with_text(
            StanzaCondition::InternalServerError,
            e.to_string(),
        )),
    }
}

fn parse(req: &IqRequest, user: &str) -> Result<Asked, StanzaError> {
    let q = req.payload;
    let mut a = Asked::default();
    if let Some(x) = q.get_child("x", DATA) {
        for (var, values) in form_fields(x) {
            if values.is_empty() {
                continue; // a field left blank asks nothing
            }
            match var.as_str() {
                "FORM_TYPE" => {
                    if one(&values, &var)? != NS {
                        return Err(bad(format!("FORM_TYPE must be {NS}")));
                    }
                }
                "with" => {
                    let v = one(&values, &var)?;
                    let j = Jid::new(&v).map_err(|_| bad("with is not a JID"))?;
                    a.with = Some(j.to_string());
                }
                "start" | "end" => {
                    let v = one(&values, &var)?;
                    let t = crate::base::time::parse_xep82(&v)
                        .ok_or_else(|| bad(format!("{var} is not an XEP-0082 date-time")))?;
                    if var == "start" {
                        a.start = Some(t);
                    } else {
                        a.end = Some(t);
                    }
                }
                "after-id" => a.after_id = Some(known_id(req, user, &one(&values, &var)?)?),
                "before-id" => a.before_id = Some(known_id(req, user, &one(&values, &var)?)?),
                "ids" => {
                    // Unknown ids simply match nothing.
                    a.ids = Some(
                        values
                            .iter()
                            .filter_map(|v| ArchiveId::parse(v.trim()))
                            .collect(),
                    )
                }
                other => {
                    // §4.1.1: a field the server does not support.
                    return Err(StanzaError::with_text(
                        StanzaCondition::FeatureNotImplemented,
                        format!("unsupported field {other}"),
                    ));
                }
            }
        }
    }
    if let Some(set) = q.get_child("set", RSM) {
        for c in set.elements() {
            let text = c.text();
            match c.name.as_str() {
                "max" => {
                    a.max = Some(text.trim().parse().map_err(|_| bad("max is a number"))?);
                }
                "after" => a.rsm_after = Some(known_id(req, user, text.trim())?),
                "before" if text.trim().is_empty() => a.rsm_before = Some(None),
                "before" => a.rsm_before = Some(Some(known_id(req, user, text.trim())?)),
                "index" => {
                    a.index = Some(text.trim().parse().map_err(|_| bad("index is a number"))?);
                }
                _ => {}
            }
        }
    }
    a.flip = q.get_child("flip-page", NS).is_some();
    Ok(a)
}

/// The range of positions the query covers, inclusive, or `None` when
/// empty. A position is the message's id unless it committed after one
/// with a later id; then it is just past that one's (`archive::place`), so
/// times bound positions closely enough.
fn range(a: &Asked, moved_reach: &dyn Fn(u64, u64) -> u64) -> Option<Range> {
    let id_lo = a.start.map(ArchiveId::at).unwrap_or(0);
    let id_hi = a
        .end
        .map(|e| ArchiveId::at(e) | ((1 << ArchiveId::NODE_BITS) - 1))
        .unwrap_or(u64::MAX);
    // A message's position is never below its id; one placed past its id
    // (it committed after a later message) has an alias: read as far as
    // the furthest of those with an id in range.
    let mut lo = id_lo;
    let mut hi = if a.end.is_some() {
        id_hi.max(moved_reach(id_lo, id_hi))
    } else {
        u64::MAX
    };
    for after in [a.after_id, a.rsm_after].into_iter().flatten() {
        lo = lo.max(after.checked_add(1)?);
    }
    for before in [a.before_id, a.rsm_before.flatten()].into_iter().flatten() {
        hi = hi.min(before.checked_sub(1)?);
    }
    (lo <= hi && id_lo <= id_hi).then_some(Range {
        positions: (lo, hi),
        ids: (id_lo, id_hi),
    })
}

/// What a query reads: positions (commit order), and the ids (times) it
/// keeps of what it reads.
struct Range {
    positions: (u64, u64),
    ids: (u64, u64),
}

fn query(req: &IqRequest, user: &str) -> IqResponse {
    query_as(req, user, &req.from.to_bare().to_string())
}

/// XEP-0313 on a hosted entity's own archive (a group-chat room, §5 and
/// XEP-0045's MAM use): `iq` from the asker to the entity `owner`; the
/// result messages come from the entity. Returns what to send, in order.
pub fn query_for(ctx: &ImCtx, owner: &str, iq: &Element) -> Vec<Element> {
    let (Some(from), Some(payload)) = (
        iq.attr("from").and_then(|f| jid::FullJid::new(f).ok()),
        iq.elements().next(),
    ) else {
        return crate::base::stanza_error::bounce(iq, StanzaCondition::BadRequest)
            .into_iter()
            .collect();
    };
    let kind = match iq.attr("type") {
        Some("get") => IqKind::Get,
        Some("set") => IqKind::Set,
        _ => return Vec::new(),
    };
    let req = IqRequest {
        server: ctx,
        from: &from,
        iq,
        payload,
        kind,
        addressee: super::Addressee::Account,
        target: None,
        session_id: 0,
    };
    let resp: IqResponse = if !ctx.config.mam.enabled {
        Err(StanzaError::new(StanzaCondition::ServiceUnavailable)).into()
    } else {
        match (kind, payload.name.as_str()) {
            (IqKind::Set, "query") => query_as(&req, owner, owner),
            (IqKind::Get, "query") => Ok(Some(fields())).into(),
            (IqKind::Get, "metadata") => metadata(&req, owner),
            _ => Err(StanzaError::new(StanzaCondition::FeatureNotImplemented)).into(),
        }
    };
    let mut out = resp.before;
    out.push(match resp.result {
        Ok(payload) => super::result(iq, payload),
        Err(e) => e.reply_to(iq),
    });
    out
}

/// [`query`] of `user`'s archive, the results from `results_from`.
fn query_as(req: &IqRequest, user: &str, results_from: &str) -> IqResponse {
    let a = match parse(req, user) {
        Ok(a) => a,
        Err(e) => return Err(e).into(),
    };
    let cfg = &req.server.config.mam;
    let max = a.max.unwrap_or(DEFAULT_PAGE).min(cfg.max_page);
    let backward = a.rsm_before.is_some();
    // An index is served by reading past what it skips: cheap near the
    // start, refused past a bound (XEP-0059 §2.4 makes it optional).
    const MAX_INDEX: usize = 10_000;
    let skip = if backward { 0 } else { a.index.unwrap_or(0) };
    if skip > MAX_INDEX {
        return Err(StanzaError::with_text(
            StanzaCondition::FeatureNotImplemented,
            format!("index past {MAX_INDEX} is not supported; page with after"),
        ))
        .into();
    }
    let moved_reach = |lo: u64, hi: u64| {
        req.server
            .state
            .archive_moved_reach(user, lo, hi)
            .unwrap_or(u64::MAX)
    };
    let page = match range(&a, &moved_reach) {
        None => Ok(crate::model::state::archive::Page {
            items: Vec::new(),
            complete: true,
        }),
        Some(Range {
            positions: (lo, hi),
            ids,
        }) => req.server.state.archive_page(
            user,
            &PageQuery {
                lower: Bound::Included(lo),
                upper: Bound::Included(hi),
                with: a.with.clone(),
                ids: a.ids.clone(),
                id_within: ids,
                max,
                skip,
                backward,
            },
        ),
    };
    let mut page = match page {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, user, "archive query failed");
            return Err(StanzaError::new(StanzaCondition::InternalServerError)).into();
        }
    };
    // RSM first/last name the page in time order; flip-page changes only
    // the order the results are sent in (§4.1.2).
    let ends = page
        .items
        .first()
        .map(|f| f.id)
        .zip(page.items.last().map(|l| l.id));
    if a.flip {
        page.items.reverse();
    }
    let queryid = req.payload.attr("queryid");
    let owner = results_from.to_string();
    let mut before = Vec::with_capacity(page.items.len());
    for item in &page.items {
        let Ok(stored) = crate::base::xml::parse_fragment(&item.xml) else {
            tracing::warn!(
                user,
                id = item.id,
                "archived message does not parse; skipped"
            );
            continue;
        };
        let stamp = std::time::Duration::from_micros(ArchiveId::micros(item.id));
        let mut result = Element::new("result", NS).with_attr("id", ArchiveId::text(item.id));
        if let Some(q) = queryid {
            result.set_attr("queryid", q);
        }
        result.push_child(
            Element::new("forwarded", FORWARD)
                .with_child(
                    Element::new("delay", DELAY)
                        .with_attr("stamp", crate::base::time::xep82(stamp)),
                )
                .with_child(stored),
        );
        before.push(
            Element::new("message", ns::CLIENT)
                .with_attr("from", owner.clone())
                .with_attr("to", req.from.to_string())
                .with_child(result),
        );
    }
    let mut set = Element::new("set", RSM);
    if let Some((first, last)) = ends {
        let mut f = Element::new("first", RSM).with_text(ArchiveId::text(first));
        if let Some(i) = a.index.filter(|_| !backward) {
            f.set_attr("index", i.to_string());
        }
        set.push_child(f);
        set.push_child(Element::new("last", RSM).with_text(ArchiveId::text(last)));
    }
    let mut fin = Element::new("fin", NS).with_child(set);
    if page.complete {
        fin.set_attr("complete", "true");
    }
    IqResponse {
        result: Ok(Some(fin)),
        before,
        close: None,
        later: None,
    }
}

/// §4.1.1: the fields a query form takes.
fn fields() -> Element {
    let field = |var: &str, kind: &str| {
        Element::new("field", DATA)
            .with_attr("var", var)
            .with_attr("type", kind)
    };
    let mut x = Element::new("x", DATA)
        .with_attr("type", "form")
        .with_child(
            field("FORM_TYPE", "hidden").with_child(Element::new("value", DATA).with_text(NS)),
        );
    for (var, kind) in [
        ("with", "jid-single"),
        ("start", "text-single"),
        ("end", "text-single"),
        ("before-id", "text-single"),
        ("after-id", "text-single"),
        ("ids", "text-multi"),
    ] {
        x.push_child(field(var, kind));
    }
    Element::new("query", NS).with_child(x)
}

fn prefs_element(p: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        let mut e = Element::new(name, NS);
        for j in jids {
            e.push_child(Element::new("jid", NS).with_text(j.clone()));
        }
        e
    };
    Element::new("prefs", NS)
        .with_attr("default", p.default.clone())
        .with_child(list("always", &p.always))
        .with_child(list("never", &p.never))
}

fn prefs_of(req: &IqRequest, user: &str) -> ArchivePrefs {
    req.server
        .state
        .archive_prefs(user)
        .ok()
        .flatten()
        .unwrap_or_else(|| ArchivePrefs {
            default: req.server.config.mam.default.clone(),
            always: Vec::new(),
            never: Vec::new(),
        })
}

fn set_prefs(req: &IqRequest, user: &str) -> IqResponse {
    let p = req.payload;
    let default = p.attr("default").unwrap_or("always");
    if !matches!(default, "always" | "never" | "roster") {
        return Err(bad("default is always, never or roster")).into();
    }
    let mut lists = [Vec::new(), Vec::new()];
    for (i, name) in ["always", "never"].into_iter().enumerate() {
        for j in p
            .get_child(name, NS)
            .into_iter()
            .flat_map(|l| l.elements())
            .filter(|e| e.name == "jid")
        {
            match Jid::new(j.text().trim()) {
                Ok(jid) => lists[i].push(jid.to_bare().to_string()),
                Err(_) => return Err(bad(format!("{name} lists a bad JID"))).into(),
            }
        }
    }
    let [always, never] = lists;
    let prefs = ArchivePrefs {
        default: default.to_string(),
        always,
        never,
    };
    let answer = prefs_element(&prefs);
    let cmd = Command::SetArchivePrefs {
        username: user.to_string(),
        prefs,
    };
    super::commit_then(req.server, cmd, "archive preferences", move |_, _| {
        Ok(Some(answer)).into()
    })
}

/// §6.2: the first and last message of the archive.
fn metadata(req: &IqRequest, user: &str) -> IqResponse {
    let mut m = Element::new("metadata", NS);
    match req.server.state.archive_ends(user) {
        Ok(Some((first, last))) => {
            for (name, id) in [("start", first), ("end", last)] {
                let stamp = std::time::Duration::from_micros(ArchiveId::micros(id));
                m.push_child(
                    Element::new(name, NS)
                        .with_attr("id", ArchiveId::text(id))
                        .with_attr("timestamp", crate::base::time::xep82(stamp)),
                );
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, user, "archive metadata failed");
            return Err(StanzaError::new(StanzaCondition::InternalServerError)).into();
        }
    }
    Ok(Some(m)).into()
}

impl Module for Mam {
    fn account_features(&self, ctx: &ImCtx) -> Vec<&'static str> {
        if ctx.config.mam.enabled {
            vec![NS, NS_EXTENDED, super::archive::SID_NS]
        } else {
            Vec::new()
        }
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![
            (IqKind::Get, Addressee::Account, NS),
            (IqKind::Set, Addressee::Account, NS),
        ]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        if !req.server.config.mam.enabled {
            return Err(StanzaError::new(StanzaCondition::ServiceUnavailable)).into();
        }
        let user = req.user();
        let user = user.as_str();
        match (req.kind, req.payload.name.as_str()) {
            (IqKind::Set, "query") => match (self.archive.settled(), req.server.arc()) {
                // Writes queued here first, and what the cluster committed
                // before the query (a copy another node archived, for a
                // message already delivered here): answer once they are in.
                (settled, Some(c)) => {
                    let (from, iq, payload) =
                        (req.from.clone(), req.iq.clone(), req.payload.clone());
                    let (kind, addressee, session_id) = (req.kind, req.addressee, req.session_id);
                    let user = user.to_string();
                    IqResponse::later(async move {
                        if let Some(settled) = settled {
                            let _ = settled.await;
                        }
                        // Raft ReadIndex; on failure, what this node has.
                        let _ = c
                            .replicator
                            .cluster()
                            .caught_up(std::time::Duration::from_secs(2))
                            .await;
                        let req = IqRequest {
                            server: &c,
                            from: &from,
                            iq: &iq,
                            payload: &payload,
                            kind,
                            addressee,
                            target: None,
                            session_id,
                        };
                        query(&req, &user)
                    })
                }
                _ => query(req, user),
            },
            (IqKind::Get, "query") => Ok(Some(fields())).into(),
            (IqKind::Get, "prefs") => Ok(Some(prefs_element(&prefs_of(req, user)))).into(),
            (IqKind::Set, "prefs") => set_prefs(req, user),
            (IqKind::Get, "metadata") => metadata(req, user),
            _ => Err(StanzaError::new(StanzaCondition::FeatureNotImplemented)).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_combine_times_and_ids_and_empty_when_crossed() {
        let a = Asked {
            start: Some(10),
            after_id: Some(ArchiveId::at(20)),
            ..Asked::default()
        };
        let none = |_: u64, _: u64| 0;
        let r = range(&a, &none).expect("a range");
        assert_eq!(r.positions, (ArchiveId::at(20) + 1, u64::MAX));
        assert_eq!(r.ids, (ArchiveId::at(10), u64::MAX));
        let crossed = Asked {
            after_id: Some(ArchiveId::at(30)),
            before_id: Some(ArchiveId::at(20)),
            ..Asked::default()
        };
        assert!(range(&crossed, &none).is_none());
        // An end reads positions as far as the furthest message placed
        // past its id (one that committed late) and keeps ids up to the
        // end only.
        let ended = Asked {
            end: Some(1_000_000),
            ..Asked::default()
        };
        let last_id = ArchiveId::at(1_000_000) | ((1 << ArchiveId::NODE_BITS) - 1);
        let r = range(&ended, &none).expect("a range");
        assert_eq!(r.ids, (0, last_id));
        assert_eq!(r.positions, (0, last_id));
        let far = |_: u64, _: u64| last_id + 77;
        assert_eq!(
            range(&ended, &far).expect("a range").positions,
            (0, last_id + 77)
        );
    }
}
