//! The message archive's storage (XEP-0313 §4, §5): one sorted map
//! (`archive_store.rs`, many messages to a sled value), keyed
//! `user \0 id` with the id big-endian, so one user's archive is one key
//! range in time order and a page is a range scan, never a load of the
//! whole archive. The id is the message's XEP-0359 stanza-id: its high bits
//! are the microseconds since the epoch at which it was made, its low 12
//! bits the node that made it (see [`ArchiveId`]).
//!
//! A stored value is `with \0 xml`: the other party's JID, then the message
//! as the archive's owner saw it.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::archive_store::ArchiveStore;
use super::{roster, StateError, Xml};

/// One message for one user's archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveEntry {
    /// The archive's owner (a local username).
    pub user: String,
    pub id: u64,
    /// The other party (the sender of an incoming message, the addressee
    /// of an outgoing one), as a JID.
    pub with: String,
    pub xml: Xml,
}

/// How the ids of archived messages are made and read.
pub struct ArchiveId;

impl ArchiveId {
    /// Bits for the node that made an id.
    pub const NODE_BITS: u32 = 12;

    /// The first id made at or after `micros` (microseconds since the epoch).
    pub fn at(micros: u64) -> u64 {
        // Past the year 2112 the time no longer fits: the last id.
        micros.min(u64::MAX >> Self::NODE_BITS) << Self::NODE_BITS
    }

    /// When the id was made, in microseconds since the epoch.
    pub fn micros(id: u64) -> u64 {
        id >> Self::NODE_BITS
    }

    /// The id as clients see it (opaque to them).
    pub fn text(id: u64) -> String {
        format!("{id:016x}")
    }

    pub fn parse(text: &str) -> Option<u64> {
        (text.len() == 16)
            .then(|| u64::from_str_radix(text, 16).ok())
            .flatten()
    }
}

/// One archived message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// Its stanza-id (what clients see and page by).
    pub id: u64,
    /// Where it sits in the archive's commit order (its id, unless it
    /// committed after a message with a later id: see [`place`]).
    pub position: u64,
    pub with: String,
    pub xml: Xml,
}

/// A page request against one user's archive.
#[derive(Debug, Clone)]
pub struct PageQuery {
    /// Ids in range (inclusive/exclusive bounds from start/end, after/before).
    pub lower: Bound<u64>,
    pub upper: Bound<u64>,
    /// Only messages with this JID: a bare JID matches any of its resources.
    pub with: Option<String>,
    /// Only these ids (XEP-0313 #extended).
    pub ids: Option<Vec<u64>>,
    /// Only ids within these (inclusive): the times asked for. Positions
    /// (`lower`, `upper`) are ids too unless a message was placed after
    /// its id, so the range is read a little wider and ids decide.
    pub id_within: (u64, u64),
    /// Most messages on the page.
    pub max: usize,
    /// Matching messages passed over before the page starts (RSM
    /// `<index>`); they are counted, not kept.
    pub skip: usize,
    /// From the newest end of the range (RSM `<before/>`).
    pub backward: bool,
}

/// A page in chronological order, and whether the range ends with it (in
/// the direction the query ran).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Archived>,
    pub complete: bool,
}

pub(super) fn key(user: &str, id: u64) -> Vec<u8> {
    let mut k = roster::prefix(user);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn value(e: &ArchiveEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(e.with.len() + 1 + e.xml.len());
    v.extend_from_slice(e.with.as_bytes());
    v.push(0);
    v.extend_from_slice(e.xml.as_bytes());
    v
}

/// The value of a message placed after its id (see [`place`]): a marker
/// byte no JID starts with, its stanza-id, then what [`value`] holds.
const MOVED: u8 = 1;

fn moved_value(e: &ArchiveEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + e.with.len() + 1 + e.xml.len());
    v.push(MOVED);
    v.extend_from_slice(&e.id.to_be_bytes());
    v.extend_from_slice(&value(e));
    v
}

/// A moved message's alias: its stanza-id -> its position. Past every
/// position key of the owner (`key(user, u64::MAX)` and longer), so ranges
/// over positions never meet it; a prefix scan (the quota, a purge) does.
fn alias_key(user: &str, id: u64) -> Vec<u8> {
    let mut k = alias_prefix(user);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// What every alias of `user` starts with.
fn alias_prefix(user: &str) -> Vec<u8> {
    let mut k = key(user, u64::MAX);
    k.push(b'a');
    k
}

fn decode(prefix_len: usize, k: &[u8], v: &[u8]) -> Option<Archived> {
    let position = u64::from_be_bytes(k.get(prefix_len..)?.try_into().ok()?);
    let (id, v) = match v.first() {
        Some(&MOVED) => (u64::from_be_bytes(v.get(1..9)?.try_into().ok()?), &v[9..]),
        _ => (position, v),
    };
    let split = v.iter().position(|b| *b == 0)?;
    Some(Archived {
        id,
        position,
        with: String::from_utf8_lossy(&v[..split]).into_owned(),
        xml: String::from_utf8_lossy(&v[split + 1..]).into_owned(),
    })
}

/// The owner's last position (None: an empty archive).
fn last_position(tree: &ArchiveStore, user: &str) -> Result<Option<u64>, StateError> {
    let p = roster::prefix(user);
    let last = tree
        .range(
            Bound::Included(p.clone()),
            Bound::Included(key(user, u64::MAX)),
            true,
        )
        .next()
        .transpose()?
        .map(|(k, _)| k);
    Ok(last.and_then(|k| {
        k.get(p.len()..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }))
}

/// Where the message with stanza-id `id` sits in `user`'s archive (None:
/// not there).
pub fn position(tree: &ArchiveStore, user: &str, id: u64) -> Result<Option<u64>, StateError> {
    if let Some(v) = tree.get(alias_key(user, id))? {
        return Ok(v.as_ref().try_into().ok().map(u64::from_be_bytes));
    }
    // A position that holds a moved message is not that message's id.
    Ok(match tree.get(key(user, id))? {
        Some(v) if v.first() != Some(&MOVED) => Some(id),
        _ => None,
    })
}

/// One stored message by its stanza-id (None: not there).
pub fn get(tree: &ArchiveStore, user: &str, id: u64) -> Result<Option<Archived>, StateError> {
    let Some(pos) = position(tree, user, id)? else {
        return Ok(None);
    };
    let k = key(user, pos);
    Ok(tree
        .get(&k)?
        .and_then(|v| decode(roster::prefix(user).len(), &k, &v)))
}

/// Put `xml` in place of the stored message `id` of `user` (a retraction's
/// tombstone, XEP-0424 §5.1 / XEP-0425 §4): the change in the owner's
/// bytes, or None if the message is not there.
pub(super) fn replace(
    tree: &ArchiveStore,
    user: &str,
    id: u64,
    xml: &str,
) -> Result<Option<i64>, StateError> {
    let Some(pos) = position(tree, user, id)? else {
        return Ok(None);
    };
    let k = key(user, pos);
    let Some(old) = tree.get(&k)? else {
        return Ok(None);
    };
    let Some(a) = decode(roster::prefix(user).len(), &k, &old) else {
        return Ok(None);
    };
    let e = ArchiveEntry {
        user: user.to_string(),
        id: a.id,
        with: a.with,
        xml: xml.to_string(),
    };
    let new = if old.first() == Some(&MOVED) {
        moved_value(&e)
    } else {
        value(&e)
    };
    let delta = new.len() as i64 - old.len() as i64;
    tree.insert(&k, &new)?;
    Ok(Some(delta))
}

/// What appending keeps in memory about each archive's owner, so that a
/// message in order costs no reads (`State::append_archive`): its last
/// position and the bytes it holds. Only the thread applying commands writes the
/// archive; every change other than an append clears all of it (those are
/// rare: deletion, expiry, purge, moderation, a snapshot installed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub last: Option<u64>,
    pub used: u64,
}

/// The owners' [`Head`]s, bounded (cleared when full: it is only a cache).
#[derive(Default)]
pub(super) struct Heads(std::sync::Mutex<std::collections::HashMap<String, Head>>);

impl Heads {
    const MAX: usize = 1 << 16;

    pub fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Head>> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX {
            map.clear();
        }
        map
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// An owner's [`Head`] as the tree has it (`used` as counted).
pub(super) fn head(tree: &ArchiveStore, user: &str, used: u64) -> Result<Head, StateError> {
    Ok(Head {
        last: last_position(tree, user)?,
        used,
    })
}

/// [`place`] for an owner whose [`Head`] is known: a message past the last
/// position can be nowhere yet, so it is written at its id without a read.
/// No position is past the last; and an alias (a message placed after its
/// id) is only ever made for an id at or below the last position then,
/// and points past it: so no alias names an id past the last position
/// either (after a crash between the alias and its position, the alias's
/// id is still at or below the positions written before it).
pub(super) fn place_at_head(
    tree: &ArchiveStore,
    e: &ArchiveEntry,
    head: &mut Head,
    commit_order: bool,
) -> Result<Placed, StateError> {
    if head.last.is_none_or(|l| e.id > l) {
        head.last = Some(e.id);
        return Ok(Placed::Write(vec![(key(&e.user, e.id), value(e))]));
    }
    let mut last = head.last;
    let placed = place(tree, e, &mut last, commit_order)?;
    if let Placed::Write(_) = &placed {
        head.last = last;
    }
    Ok(placed)
}

/// Key-value pairs to write, in order.
pub(super) type Writes = Vec<(Vec<u8>, Vec<u8>)>;

/// What becomes of a newly committed message (see [`place`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Placed {
    /// Already there as it is: a command applied again after a restart.
    Replay,
    /// Write these, in this order.
    Write(Writes),
    /// Not kept: its id already names another message (an id made twice,
    /// by a node whose clock went back across a restart), or no position
    /// is left.
    Refused,
}

/// Where a newly committed message goes. In commit order (`commit_order`:
/// once the cluster's log has switched to batch entries, so every node of
/// the cluster places alike), a client that pages `after` the last id it
/// saw never misses a message committed later with a smaller id (made
/// earlier, or on a node whose clock is behind): a message whose id is
/// past the owner's last position is written at its id; one that is not
/// goes right after the last position, with an alias from its id, written
/// first (a crash between the two leaves an alias, which the command,
/// applied again, completes). Before the switch, a message is written at
/// its id, as nodes of older versions do.
pub(super) fn place(
    tree: &ArchiveStore,
    e: &ArchiveEntry,
    last: &mut Option<u64>,
    commit_order: bool,
) -> Result<Placed, StateError> {
    // Read by the applying thread: the lookups keep to one region each.
    let positions = (key(&e.user, 0), key(&e.user, u64::MAX));
    let aliases = (alias_key(&e.user, 0), alias_key(&e.user, u64::MAX));
    let at_position = |p: u64| tree.get_applying(&key(&e.user, p), &positions.0, &positions.1);
    if let Some(at) = tree.get_applying(&alias_key(&e.user, e.id), &aliases.0, &aliases.1)? {
        let Some(at) = at.as_ref().try_into().ok().map(u64::from_be_bytes) else {
            return Ok(Placed::Refused);
        };
        let moved = moved_value(e);
        return Ok(match at_position(at)? {
            Some(v) if v.as_ref() == moved.as_slice() => Placed::Replay,
            Some(_) => Placed::Refused,
            None => {
                let base = match *last {
                    Some(l) => Some(l),
                    None => last_position(tree, &e.user)?,
                };
                *last = Some(base.map_or(at, |l| l.max(at)));
                Placed::Write(vec![(key(&e.user, at), moved)])
            }
        });
    }
    if let Some(v) = at_position(e.id)? {
        if v.first() != Some(&MOVED) {
            return Ok(if v.as_ref() == value(e).as_slice() {
                Placed::Replay
            } else {
                Placed::Refused
            });
        }
        // That position holds a message placed after its own id.
        if !commit_order {
            return Ok(Placed::Refused);
        }
    }
    let last_now = match *last {
        Some(l) => Some(l),
        None => last_position(tree, &e.user)?,
    };
    Ok(match last_now {
        Some(l) if commit_order && e.id <= l => {
            let Some(at) = l.checked_add(1).filter(|a| *a < u64::MAX) else {
                return Ok(Placed::Refused);
            };
            *last = Some(at);
            Placed::Write(vec![
                (alias_key(&e.user, e.id), at.to_be_bytes().to_vec()),
                (key(&e.user, at), moved_value(e)),
            ])
        }
        _ => {
            *last = Some(last_now.map_or(e.id, |l| l.max(e.id)));
            Placed::Write(vec![(key(&e.user, e.id), value(e))])
        }
    })
}

fn with_matches(filter: &str, with: &str) -> bool {
    if filter.contains('/') {
        filter == with
    } else {
        with == filter
            || with
                .strip_prefix(filter)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

fn bound_key(user: &str, b: Bound<u64>, low: bool) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(id) => Bound::Included(key(user, id)),
        Bound::Excluded(id) => Bound::Excluded(key(user, id)),
        Bound::Unbounded if low => Bound::Included(roster::prefix(user)),
        Bound::Unbounded => Bound::Included(key(user, u64::MAX)),
    }
}

/// One page of `user`'s archive; reads only as far as the page needs (plus
/// one message, to know whether the range goes on).
pub fn page(tree: &ArchiveStore, user: &str, q: &PageQuery) -> Result<Page, StateError> {
    let p = roster::prefix(user).len();
    let iter = tree.range(
        bound_key(user, q.lower, true),
        bound_key(user, q.upper, false),
        q.backward,
    );
    let mut items = Vec::new();
    let mut complete = true;
    let mut skip = q.skip;
    for kv in iter {
        let (k, v) = kv?;
        // Without filters a skipped message is not even decoded.
        let unfiltered = q.ids.is_none() && q.with.is_none() && q.id_within == (0, u64::MAX);
        if skip > 0 && unfiltered {
            skip -= 1;
            continue;
        }
        let Some(a) = decode(p, &k, &v) else { continue };
        if a.id < q.id_within.0 || a.id > q.id_within.1 {
            continue;
        }
        if let Some(ids) = &q.ids {
            if !ids.contains(&a.id) {
                continue;
            }
        }
        if let Some(w) = &q.with {
            if !with_matches(w, &a.with) {
                continue;
            }
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        if items.len() == q.max {
            complete = false;
            break;
        }
        items.push(a);
    }
    if q.backward {
        items.reverse();
    }
    Ok(Page { items, complete })
}

/// The furthest position of a message of `user` placed past its id (it
/// committed after a later message) whose id is within `lo..=hi` (0: none).
pub fn moved_reach(tree: &ArchiveStore, user: &str, lo: u64, hi: u64) -> Result<u64, StateError> {
    let mut reach = 0;
    let aliases = tree.range(
        Bound::Included(alias_key(user, lo)),
        Bound::Included(alias_key(user, hi)),
        false,
    );
    for kv in aliases {
        if let Some(at) = kv?.1.as_ref().try_into().ok().map(u64::from_be_bytes) {
            reach = reach.max(at);
        }
    }
    Ok(reach)
}

/// The stanza-ids of the first and last message of `user`'s archive, in
/// commit order (XEP-0313 §6.2 metadata).
pub fn ends(tree: &ArchiveStore, user: &str) -> Result<Option<(u64, u64)>, StateError> {
    let p = roster::prefix(user);
    let all = |backward| {
        tree.range(
            Bound::Included(p.clone()),
            Bound::Included(key(user, u64::MAX)),
            backward,
        )
        .next()
        .transpose()
    };
    let first = all(false)?;
    let last = all(true)?;
    let id = |kv: (sled::IVec, sled::IVec)| decode(p.len(), &kv.0, &kv.1).map(|a| a.id);
    Ok(match (first.and_then(id), last.and_then(id)) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    })
}

/// Remove `user`'s messages placed before `micros` (retention), with the
/// aliases of those that were moved; returns how many went.
pub fn expire(tree: &ArchiveStore, user: &str, micros: u64) -> Result<usize, StateError> {
    let cut = ArchiveId::at(micros);
    let n = tree.retain_range(
        Bound::Included(roster::prefix(user)),
        Bound::Excluded(key(user, cut)),
        |_, _| false,
    )?;
    tree.retain_range(
        Bound::Included(alias_key(user, 0)),
        Bound::Included(alias_key(user, u64::MAX)),
        |_, v| {
            let at = v.try_into().ok().map(u64::from_be_bytes);
            at.is_some_and(|at| at >= cut)
        },
    )?;
    Ok(n)
}

/// What `user`'s archive occupies (keys and values), for the byte quota.
pub fn bytes(tree: &ArchiveStore, user: &str) -> Result<usize, StateError> {
    let mut n = 0;
    for kv in tree.scan_prefix(roster::prefix(user)) {
        let (k, v) = kv?;
        n += k.len() + v.len();
    }
    Ok(n)
}

/// What the archive keeps for a user (XEP-0313 §6.1 preferences).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivePrefs {
    /// "always", "never" or "roster".
    pub default: String,
    /// Bare JIDs always archived.
    pub always: Vec<String>,
    /// Bare JIDs never archived.
    pub never: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, ArchiveStore) {
        use super::super::tracked::Tracked;
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let undo: std::sync::Arc<super::super::tracked::Undo> = Default::default();
        let t = ArchiveStore::open(
            &db,
            Tracked::new(db.open_tree("archive").unwrap(), 0, undo.clone()),
            Tracked::new(db.open_tree("archive_used").unwrap(), 1, undo),
        )
        .unwrap();
        (dir, t)
    }

    fn put(t: &ArchiveStore, user: &str, id: u64, with: &str) {
        let e = ArchiveEntry {
            user: user.into(),
            id,
            with: with.into(),
            xml: format!("<message id='{id}'/>"),
        };
        if let Placed::Write(writes) = place(t, &e, &mut None, true).unwrap() {
            for (k, v) in writes {
                t.append(k, v).unwrap();
            }
            t.end_append().unwrap();
        }
    }

    /// Commit order, not id order: a message committed after one with a
    /// later id comes after it, under its own id (an alias), so paging
    /// `after` the later one finds it.
    #[test]
    fn a_message_committed_late_is_placed_after_what_is_there() {
        let (_d, t) = tree();
        put(&t, "alice", 10, "bob@x");
        put(&t, "alice", 30, "bob@x");
        put(&t, "alice", 20, "carol@x"); // made earlier, committed last
        put(&t, "alice", 40, "bob@x");
        let all = page(&t, "alice", &q(10, false)).unwrap();
        let ids: Vec<u64> = all.items.iter().map(|a| a.id).collect();
        assert_eq!(ids, [10, 30, 20, 40], "in commit order, stanza-ids kept");
        assert_eq!(all.items[2].position, 31);
        assert_eq!(all.items[2].with, "carol@x");
        // A client that saw 30 last pages on from it and finds 20.
        let mut after = q(10, false);
        after.lower = Bound::Excluded(position(&t, "alice", 30).unwrap().unwrap());
        let ids: Vec<u64> = page(&t, "alice", &after)
            .unwrap()
            .items
            .iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, [20, 40]);
        // Its id leads to its place; the place is not an id of anything.
        assert_eq!(position(&t, "alice", 20).unwrap(), Some(31));
        assert_eq!(position(&t, "alice", 31).unwrap(), None);
        assert_eq!(position(&t, "alice", 25).unwrap(), None);
        // A replay of the same message writes nothing.
        let e = ArchiveEntry {
            user: "alice".into(),
            id: 20,
            with: "carol@x".into(),
            xml: "<message id='20'/>".into(),
        };
        assert_eq!(place(&t, &e, &mut None, true).unwrap(), Placed::Replay);
        // The same id for another message (made twice) is refused.
        let other = ArchiveEntry {
            xml: "<message id='other'/>".into(),
            ..e.clone()
        };
        assert_eq!(place(&t, &other, &mut None, true).unwrap(), Placed::Refused);
        // A crash between the alias and the position: applied again, the
        // position is written, nowhere else.
        t.remove(&key("alice", 31)).unwrap();
        match place(&t, &e, &mut None, true).unwrap() {
            Placed::Write(w) => assert_eq!(w, vec![(key("alice", 31), moved_value(&e))]),
            p => panic!("{p:?}"),
        }
        t.insert(&key("alice", 31), &moved_value(&e)).unwrap();
        assert_eq!(ends(&t, "alice").unwrap(), Some((10, 40)));
        assert_eq!(moved_reach(&t, "alice", 0, 25).unwrap(), 31);
        assert_eq!(moved_reach(&t, "alice", 21, 40).unwrap(), 0);
        // Retention takes moved messages with their aliases.
        assert_eq!(
            expire(&t, "alice", ArchiveId::micros(ArchiveId::at(0)) + 1).unwrap(),
            4
        );
        assert_eq!(position(&t, "alice", 20).unwrap(), None);
        assert_eq!(t.scan_prefix(roster::prefix("alice")).count(), 0);
    }

    fn q(max: usize, backward: bool) -> PageQuery {
        PageQuery {
            skip: 0,
            lower: Bound::Unbounded,
            upper: Bound::Unbounded,
            with: None,
            ids: None,
            id_within: (0, u64::MAX),
            max,
            backward,
        }
    }

    #[test]
    fn pages_run_both_ways_and_know_where_the_range_ends() {
        let (_d, t) = tree();
        for id in 1..=5 {
            put(&t, "alice", id, "bob@x/r");
        }
        put(&t, "alicea", 3, "bob@x"); // another user whose name extends alice's
        let first = page(&t, "alice", &q(2, false)).unwrap();
        assert_eq!(first.items.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2]);
        assert!(!first.complete);
        let last = page(&t, "alice", &q(2, true)).unwrap();
        assert_eq!(last.items.iter().map(|a| a.id).collect::<Vec<_>>(), [4, 5]);
        let mut rest = q(10, false);
        rest.lower = Bound::Excluded(2);
        let rest = page(&t, "alice", &rest).unwrap();
        assert_eq!(rest.items.len(), 3);
        assert!(rest.complete);
        assert_eq!(ends(&t, "alice").unwrap(), Some((1, 5)));
    }

    #[test]
    fn with_matches_a_bare_jid_and_its_resources_only() {
        let (_d, t) = tree();
        put(&t, "alice", 1, "bob@x/phone");
        put(&t, "alice", 2, "bobby@x");
        put(&t, "alice", 3, "bob@x");
        let mut f = q(10, false);
        f.with = Some("bob@x".into());
        let ids: Vec<u64> = page(&t, "alice", &f)
            .unwrap()
            .items
            .iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(expire(&t, "alice", ArchiveId::micros(3)).unwrap(), 0);
    }

    #[test]
    fn ids_read_back_and_reject_what_is_not_one() {
        let id = ArchiveId::at(1_700_000_000_000_000) | 7;
        assert_eq!(ArchiveId::parse(&ArchiveId::text(id)), Some(id));
        assert_eq!(ArchiveId::micros(id), 1_700_000_000_000_000);
        assert_eq!(ArchiveId::parse("zz"), None);
        assert_eq!(ArchiveId::parse("not-an-id-at-all"), None);
    }
}
