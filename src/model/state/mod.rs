//! Persistent state as typed commands applied by one state machine.
//!
//! Every write goes through [`State::apply`] with a [`Command`], so the
//! cluster can later replicate the same commands through Raft and apply them
//! on every node without touching the features that issue them.

pub mod accounts;
pub mod archive;
pub mod archive_store;
pub mod fast;
pub mod pubsub;
pub mod push;
mod read_cache;
pub mod roster;
pub mod sessions;
pub mod snapshot;
pub mod tracked;
pub mod uploads;

use std::path::Path;
use std::sync::Arc;

use tracked::{DumpError, DumpHook, Tracked, Undo};

use serde::{Deserialize, Serialize};

use crate::model::sasl::Credentials;
pub use archive::{ArchiveEntry, ArchivePrefs};
pub use roster::{RosterItem, Subscription};
pub use sessions::SessionRecord;

/// A stored vCard, private-storage fragment or stanza is kept as XML text.
pub type Xml = String;

/// The roster item a conditional `RosterPut` expects to replace (None:
/// none stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedItem {
    pub item: Option<RosterItem>,
}

/// A change to persistent state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    CreateAccount {
        username: String,
        credentials: Credentials,
    },
    SetPassword {
        username: String,
        credentials: Credentials,
    },
    DeleteAccount {
        username: String,
    },
    /// Store (or replace) a roster item; empty items are deleted. With
    /// `expect`, only if the stored item is still that one (a subscription
    /// change computed from it; two at once for one item would otherwise
    /// overwrite each other): else `Superseded`, and it is computed again.
    RosterPut {
        username: String,
        item: RosterItem,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<ExpectedItem>,
    },
    RosterDelete {
        username: String,
        jid: String,
    },
    /// Queue a message for an offline user (XEP-0160), refused past
    /// `quota` messages or `quota_bytes` bytes (0: no byte limit, as in
    /// log entries written before it existed).
    OfflinePush {
        username: String,
        stanza: Xml,
        quota: usize,
        #[serde(default)]
        quota_bytes: usize,
    },
    /// Drop queued messages that were delivered: by their keys (the Raft
    /// index that stored each), or the first `count` (older log entries).
    OfflineDrop {
        username: String,
        #[serde(default)]
        count: usize,
        #[serde(default)]
        keys: Vec<u64>,
    },
    /// XEP-0191: add JIDs to the blocklist.
    Block {
        username: String,
        jids: Vec<String>,
    },
    /// XEP-0191: remove JIDs from the blocklist; none means all.
    Unblock {
        username: String,
        jids: Vec<String>,
    },
    /// XEP-0054.
    SetVcard {
        username: String,
        vcard: Xml,
    },
    /// XEP-0049: `key` is the fragment's namespace (and name).
    SetPrivate {
        username: String,
        key: String,
        xml: Xml,
    },
    /// XEP-0012: when the user's last session ended, and its status.
    SetLastActivity {
        username: String,
        unix_secs: u64,
        status: String,
    },
    /// A resource was bound on a node (replaces any other holder).
    SessionBind {
        record: SessionRecord,
        /// A session handed over between nodes (XEP-0198 across the
        /// cluster) binds only in place of the holder it left, `(node,
        /// sid)`, or where the address is free: a copy whose hand-over
        /// was given up on and tried elsewhere cannot land over the copy
        /// that won.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<(u64, u64)>,
    },
    /// A session's availability and priority changed (RFC 6121 §8.5 routing).
    SessionPresence {
        record: SessionRecord,
    },
    /// A session became resumable (XEP-0198) under `sm_id`.
    SessionResumable {
        jid: String,
        node: u64,
        sid: u64,
        sm_id: String,
    },
    /// A session ended (only removed if it is still that session).
    SessionUnbind {
        jid: String,
        node: u64,
        sid: u64,
    },
    /// A node is gone (or restarted): drop all its sessions (and components).
    PurgeNode {
        node: u64,
        /// Only sessions bound before this time (unix ms): a node purging
        /// its own records at start-up must not drop the sessions it bound
        /// since, should the purge be applied late. `None`: all of them.
        #[serde(default)]
        before: Option<u64>,
    },
    /// A change to one of an account's publish-subscribe nodes (PEP,
    /// XEP-0163; `state/pubsub.rs`).
    Pubsub {
        owner: String,
        node: String,
        op: pubsub::PubsubOp,
    },
    /// What a client's capabilities (XEP-0115) say it wants notified of
    /// (its `+notify` features, without the suffix), by verification string.
    CapsNotify {
        ver: String,
        notify: Vec<String>,
    },
    /// An HTTP upload (XEP-0363) is stored on `record.holders`
    /// (`state/uploads.rs`); refused if `id` is taken.
    UploadStored {
        id: String,
        record: uploads::UploadRecord,
    },
    /// Uploads created before this time (unix ms) expire.
    UploadExpire {
        before_ms: u64,
    },
    /// XEP-0377: `reporter` reported `jid` (spam or abuse), for the
    /// server's operators (the admin API); past `max` kept, the oldest goes.
    SpamReport {
        report: SpamReport,
        max: usize,
    },
    /// An operator ends a session (the admin API): the node holding it
    /// closes it. Nothing is stored.
    SessionKick {
        jid: String,
    },
    /// XEP-0484: a new FAST token for `username`'s client `agent`; the one
    /// it had becomes the previous one.
    FastIssue {
        username: String,
        agent: String,
        token: fast::FastToken,
    },
    /// XEP-0484: `username`'s FAST tokens end: one client's, or all.
    FastRevoke {
        username: String,
        agent: Option<String>,
    },
    /// XEP-0357: `username` registers (or registers again) a device with
    /// an app server (`state/push.rs`); refused past `max` registrations.
    PushEnable {
        username: String,
        registration: push::PushRegistration,
        max: usize,
    },
    /// XEP-0357: registrations with the app server `jid` end (only the one
    /// for `node`, when given).
    PushDisable {
        username: String,
        jid: String,
        node: Option<String>,
    },
    /// An external component (XEP-0114) for `domain` connected to `node`.
    ComponentBind {
        domain: String,
        node: u64,
        sid: u64,
    },
    /// That component connection ended (only if it is still the one bound).
    ComponentUnbind {
        domain: String,
        node: u64,
        sid: u64,
    },
    /// A hosted service's entity (a group-chat room, `room@service`) lives
    /// on `node`, unless another node claimed it first. Claims share the
    /// components' tree (keys with an `@`), so a purged node loses them.
    HostedClaim {
        entity: String,
        node: u64,
    },
    /// A draining node `from` hands its entity to node `to` (only if it
    /// still owns it).
    HostedMove {
        entity: String,
        from: u64,
        to: u64,
    },
    /// A hosted entity's records (a room's configuration, occupants,
    /// history): each key set to its value, or removed for None; only
    /// from the entity's owner `node` (a copy left on a node that lost it
    /// writes nothing). Removing its `meta` record releases the entity.
    HostedWrite {
        entity: String,
        node: u64,
        writes: Vec<(String, Option<String>)>,
        /// Messages into the entity's own archive (XEP-0313 on a room),
        /// with the owner's byte quota (0: no limit).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        archive: Vec<ArchiveEntry>,
        #[serde(default)]
        quota_bytes: u64,
        /// Messages of the entity's archive replaced (by id) with the
        /// given XML: a moderated message's tombstone (XEP-0425).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replace: Vec<ArchiveEntry>,
    },
    /// XEP-0313: messages into their owners' archives, many per log entry.
    /// An owner past `quota_bytes` (0: no limit) keeps what it has and
    /// archives nothing more until messages expire or are purged.
    ArchiveAppend {
        entries: Vec<ArchiveEntry>,
        quota_bytes: u64,
    },
    /// XEP-0313 §6.1: what `username`'s archive keeps.
    SetArchivePrefs {
        username: String,
        prefs: ArchivePrefs,
    },
    /// Retention: drop every archived message made before `micros`
    /// (microseconds since the epoch).
    ArchiveExpire {
        micros: u64,
    },
    /// An operator empties `username`'s archive.
    ArchivePurge {
        username: String,
    },
}

impl Command {
    /// Whether `bytes` (a command as replicated: serde JSON, externally
    /// tagged) is an [`Command::ArchiveAppend`], without decoding it all.
    pub fn is_archive_append(bytes: &[u8]) -> bool {
        bytes.starts_with(b"{\"ArchiveAppend\":")
    }
}

/// What applying a command produced, for commands that report back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The roster version after a roster change.
    pub roster_version: u64,
    /// The session a `SessionBind` displaced, if any.
    pub displaced: Option<SessionRecord>,
    /// The sessions a `PurgeNode` removed.
    pub purged: Vec<SessionRecord>,
    /// Archive entries an `ArchiveAppend` refused (their owner is over quota).
    pub refused: Vec<u64>,
    /// Hosted entities a `PurgeNode` took from the node that owned them.
    pub released: Vec<String>,
    /// What a `Pubsub` change did.
    pub pubsub: pubsub::PubsubApplied,
}

/// Where a command sits in the replicated log: keys of records it creates
/// derive from it, so every replica writes the same bytes.
#[derive(Debug, Clone, Copy)]
pub enum LogIndex {
    /// The Raft index of the committed entry.
    Raft(u64),
    /// A single-node edit outside the cluster (the offline CLI).
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("data directory {0} is in use by another process (is a node running?)")]
    Locked(String),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("no account {0}")]
    NoSuchAccount(String),
    #[error("offline storage for {0} is full")]
    QuotaExceeded(String),
    /// A bind older than the session already bound to that address (a
    /// proposal that landed after its caller gave up).
    #[error("a newer session is bound to {0}")]
    Superseded(String),
    /// The change could not be replicated (no quorum, node stopping).
    #[error("cluster: {0}")]
    Cluster(String),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
}

/// The node's replica of persistent state, kept in sled.
pub struct State {
    db: sled::Db,
    /// The undo record of a snapshot being written (`tracked.rs`).
    undo: Arc<Undo>,
    accounts: Tracked,
    roster: Tracked,
    roster_versions: Tracked,
    offline: Tracked,
    blocklist: Tracked,
    user_data: Tracked,
    sessions: Tracked,
    /// Component domain -> (node, sid) of its connection.
    components: Tracked,
    /// XEP-0313 archives (`archive.rs`), in chunks and a tail, with the
    /// bytes each holds (what the quota counts): `archive_store.rs`.
    archive: archive_store::ArchiveStore,
    /// The archive's tail as it was at the index of the snapshot being
    /// written (`State::begin_snapshot`).
    captured: std::sync::Mutex<Option<archive_store::Captured>>,
    /// Whether the command being applied places archived messages in
    /// commit order (`archive::place`): set for each command by the state
    /// machine (replication.rs), from the cluster's switch to batch
    /// entries, so every node of a cluster places alike.
    archive_commit_order: std::sync::atomic::AtomicBool,
    /// Each archive owner's last position and bytes, for appends
    /// (`archive::Heads`).
    archive_heads: archive::Heads,
    /// Read on every message, kept decoded (`read_cache.rs`): the session
    /// table by bare JID, whether an account exists, whether a user blocks
    /// anyone, archive preferences.
    session_cache: read_cache::ReadCache<std::sync::Arc<Vec<SessionRecord>>>,
    account_cache: read_cache::ReadCache<bool>,
    blocks_anyone: read_cache::ReadCache<bool>,
    prefs_cache: read_cache::ReadCache<Option<ArchivePrefs>>,
}

/// A snapshot fixed by [`State::begin_snapshot`] and not written yet:
/// dropped unwritten, it stops the undo record (which would otherwise grow
/// with every write and refuse every later snapshot).
pub struct SnapshotPending(Option<Arc<State>>);

impl SnapshotPending {
    pub fn new(state: Arc<State>) -> SnapshotPending {
        SnapshotPending(Some(state))
    }

    pub fn write(mut self, out: &mut dyn std::io::Write) -> Result<(), DumpError> {
        match self.0.take() {
            Some(s) => s.write_snapshot(out),
            None => Err(DumpError::Cancelled),
        }
    }
}

impl Drop for SnapshotPending {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.undo.end();
        }
    }
}

/// One abuse report (XEP-0377).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpamReport {
    /// The reporting account's bare JID.
    pub reporter: String,
    /// Whom it reported.
    pub jid: String,
    /// `urn:xmpp:reporting:spam` or `urn:xmpp:reporting:abuse`.
    pub reason: String,
    pub text: String,
    /// Stanza ids (XEP-0359) of the reported messages, as `by id`.
    pub stanza_ids: Vec<String>,
    pub at_ms: u64,
}

/// Clients (user-agent ids) with FAST tokens per account (XEP-0484).
const MAX_FAST_CLIENTS: usize = 16;

/// Reports are kept under a name no account can have.
const REPORTS: &str = "@reports";

/// Keys in `user_data`.
/// Capabilities are kept under a name no account can have.
fn caps_key(ver: &str) -> Vec<u8> {
    data_key("@caps", "notify", ver)
}

fn data_key(user: &str, kind: &str, key: &str) -> Vec<u8> {
    roster::key(user, &format!("{kind}\0{key}"))
}

/// A snapshot's contents: each tree's name and its key/value pairs.
/// The trees that make up replicated state (and its snapshots).
const TREES: [&str; 10] = [
    "sessions",
    "components",
    "accounts",
    "roster",
    "roster_versions",
    "offline",
    "blocklist",
    "user_data",
    "archive",
    "archive_used",
];

/// Open the node's sled database (state and Raft log share it).
pub fn open_db(dir: &Path) -> Result<sled::Db, StateError> {
    sled::Config::new()
        .path(dir.join("db"))
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| match &e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                StateError::Locked(dir.display().to_string())
            }
            _ => StateError::Storage(e),
        })
}

impl State {
    pub fn open(dir: &Path) -> Result<State, StateError> {
        Self::from_db(open_db(dir)?)
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Everything replicated, for a Raft snapshot.
    pub fn export(&self) -> Result<Vec<u8>, StateError> {
        let mut all: snapshot::Trees = Vec::new();
        for name in TREES {
            // The archive as its pairs (`archive_store.rs`), its tail with them.
            let kvs = match name {
                "archive" => self
                    .archive
                    .logical()
                    .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<Vec<_>, _>>()?,
                "archive_used" => self
                    .archive
                    .used_all()?
                    .into_iter()
                    .map(|(k, n)| (k, n.to_be_bytes().to_vec()))
                    .collect(),
                _ => self
                    .db
                    .open_tree(name)?
                    .iter()
                    .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            all.push((name.to_string(), kvs));
        }
        Ok(snapshot::encode(all))
    }

    /// Replace everything replicated with a snapshot's contents.
    pub fn import(&self, data: &[u8]) -> Result<(), StateError> {
        let r = self.import_whole(data);
        // Whatever was read meanwhile, even from an import that failed.
        self.forget_reads();
        let reloaded = self.archive.reload();
        r.and(reloaded.map_err(StateError::from))
    }

    fn import_whole(&self, data: &[u8]) -> Result<(), StateError> {
        if data.starts_with(snapshot::stream::MAGIC) {
            return self.import_from(&mut &data[..]);
        }
        self.undo.cancel();
        let all = snapshot::decode(data)?;
        self.archive.reset()?;
        for name in TREES {
            self.db.open_tree(name)?.clear()?;
        }
        for (name, kvs) in all {
            if !TREES.contains(&name.as_str()) {
                continue;
            }
            let tree = self.db.open_tree(&name)?;
            for (k, v) in kvs {
                tree.insert(k, v)?;
            }
        }
        self.db.flush()?;
        Ok(())
    }

    pub fn from_db(db: sled::Db) -> Result<State, StateError> {
        let undo = Arc::new(Undo::default());
        let t = |name: &str| -> Result<Tracked, StateError> {
            let slot = TREES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| StateError::Cluster(format!("no tree {name}")))?;
            Ok(Tracked::new(db.open_tree(name)?, slot, undo.clone()))
        };
        Ok(State {
            accounts: t("accounts")?,
            roster: t("roster")?,
            roster_versions: t("roster_versions")?,
            offline: t("offline")?,
            blocklist: t("blocklist")?,
            user_data: t("user_data")?,
            sessions: t("sessions")?,
            components: t("components")?,
            archive: archive_store::ArchiveStore::open(&db, t("archive")?, t("archive_used")?)?,
            captured: Default::default(),
            archive_commit_order: std::sync::atomic::AtomicBool::new(false),
            archive_heads: archive::Heads::default(),
            session_cache: Default::default(),
            blocks_anyone: Default::default(),
            prefs_cache: Default::default(),
            account_cache: Default::default(),
            undo,
            db,
        })
    }

    /// The replicated trees in `TREES` order.
    fn trees(&self) -> [(&'static str, &sled::Tree); 10] {
        let by_name = |name: &'static str| -> (&'static str, &sled::Tree) {
            let t: &Tracked = match name {
                "archive" => return (name, self.archive.chunk_tree()),
                "archive_used" => return (name, self.archive.used_tree()),
                "sessions" => &self.sessions,
                "components" => &self.components,
                "accounts" => &self.accounts,
                "roster" => &self.roster,
                "roster_versions" => &self.roster_versions,
                "offline" => &self.offline,
                "blocklist" => &self.blocklist,
                _ => &self.user_data,
            };
            (name, t)
        };
        TREES.map(by_name)
    }

    /// Fix the snapshot at the state as applied now. Called on the thread
    /// that applies commands; [`State::write_snapshot`] then writes it out
    /// on any thread while commands go on being applied.
    pub fn begin_snapshot(&self) -> Result<(), DumpError> {
        self.undo.begin()?;
        *self.captured.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.archive.capture());
        Ok(())
    }

    /// Write the snapshot fixed by [`State::begin_snapshot`] (stream format).
    pub fn write_snapshot(&self, out: &mut dyn std::io::Write) -> Result<(), DumpError> {
        // The archive is written as its pairs, with its tail's, and the
        // counts as the tail has them (`archive_store.rs`).
        let Some(captured) = self
            .captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            self.undo.end();
            return Err(DumpError::Cancelled);
        };
        let (mut chunks, mut used) = captured.hooks();
        let mut chunks = Some(&mut chunks as &mut dyn DumpHook);
        let mut used = Some(&mut used as &mut dyn DumpHook);
        let mut trees = self.trees().map(|(name, tree)| (name, tree, None));
        for t in trees.iter_mut() {
            t.2 = match t.0 {
                "archive" => chunks.take(),
                "archive_used" => used.take(),
                _ => None,
            };
        }
        let r = self.undo.dump(&mut trees, out);
        self.undo.end();
        r
    }

    /// Replace everything replicated with a streamed snapshot, a record at
    /// a time (sled batches of a few thousand pairs or a few MiB, whichever
    /// comes first: archive entries can be large, and a batch sits in memory).
    pub fn import_from(&self, input: &mut dyn std::io::Read) -> Result<(), StateError> {
        let r = self.import_stream(input);
        // Whatever was read meanwhile, even from an import that failed.
        self.forget_reads();
        let reloaded = self.archive.reload();
        r.and(reloaded.map_err(StateError::from))
    }

    fn import_stream(&self, input: &mut dyn std::io::Read) -> Result<(), StateError> {
        use snapshot::stream::{Reader, Record};
        const BATCH: usize = 4096;
        const BATCH_BYTES: usize = 8 << 20;
        self.undo.cancel();
        let mut reader = Reader::new(input).map_err(|e| StateError::Cluster(e.to_string()))?;
        self.archive.reset()?;
        for (_, tree) in self.trees() {
            tree.clear()?;
        }
        let mut current: Option<sled::Tree> = None;
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        let mut bytes = 0usize;
        while let Some(rec) = reader
            .next_record()
            .map_err(|e| StateError::Cluster(e.to_string()))?
        {
            match rec {
                Record::Tree(name) => {
                    if let Some(t) = current.take() {
                        t.apply_batch(std::mem::take(&mut batch))?;
                    }
                    (n, bytes) = (0, 0);
                    // Trees this version does not know are skipped.
                    current = TREES
                        .contains(&name.as_str())
                        .then(|| self.db.open_tree(&name))
                        .transpose()?;
                }
                Record::Pair(k, v) => {
                    let Some(t) = &current else { continue };
                    bytes += k.len() + v.len();
                    batch.insert(k, v);
                    n += 1;
                    if n >= BATCH || bytes >= BATCH_BYTES {
                        t.apply_batch(std::mem::take(&mut batch))?;
                        (n, bytes) = (0, 0);
                    }
                }
            }
        }
        if let Some(t) = current {
            t.apply_batch(batch)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Apply one command and make it durable before returning.
    pub fn apply(&self, cmd: &Command) -> Result<Applied, StateError> {
        let applied = self.apply_unflushed(LogIndex::Local, cmd)?;
        self.db.flush()?;
        Ok(applied)
    }

    /// Apply one command; durable at the next flush. Under Raft that is
    /// the log's next flush (the command is already in the log on disk, and
    /// applied again from it after a crash; see `starling_cluster::StateMachine`).
    pub fn apply_unflushed(&self, index: LogIndex, cmd: &Command) -> Result<Applied, StateError> {
        let r = self.apply_command(index, cmd);
        // After the write (whether or not all of it went through), so a
        // reader never caches what it read before it.
        let bare = crate::base::jid_text::bare;
        match cmd {
            Command::SessionBind { record, .. } | Command::SessionPresence { record } => {
                self.session_cache.changed(Some(bare(&record.jid)))
            }
            Command::SessionResumable { jid, .. } | Command::SessionUnbind { jid, .. } => {
                self.session_cache.changed(Some(bare(jid)))
            }
            Command::PurgeNode { .. } => self.session_cache.changed(None),
            Command::Block { username, .. } | Command::Unblock { username, .. } => {
                self.blocks_anyone.changed(Some(username))
            }
            Command::SetArchivePrefs { username, .. } => self.prefs_cache.changed(Some(username)),
            Command::CreateAccount { username, .. } => self.account_cache.changed(Some(username)),
            Command::DeleteAccount { username } => {
                self.account_cache.changed(Some(username));
                self.archive_heads.clear();
                self.blocks_anyone.changed(Some(username));
                self.prefs_cache.changed(Some(username));
            }
            // Every change to an archive but an append (which keeps the
            // heads itself) is read from the tree again.
            Command::ArchiveExpire { .. } | Command::ArchivePurge { .. } => {
                self.archive_heads.clear()
            }
            Command::HostedWrite { replace, .. } if !replace.is_empty() => {
                self.archive_heads.clear()
            }
            _ => {}
        }
        r
    }

    /// Everything read from memory is read again (a snapshot installed).
    fn forget_reads(&self) {
        self.archive_heads.clear();
        self.session_cache.changed(None);
        self.account_cache.changed(None);
        self.blocks_anyone.changed(None);
        self.prefs_cache.changed(None);
    }

    fn apply_command(&self, index: LogIndex, cmd: &Command) -> Result<Applied, StateError> {
        let mut applied = Applied::default();
        match cmd {
            Command::CreateAccount {
                username,
                credentials,
            } => accounts::create(&self.accounts, username, credentials)?,
            Command::SetPassword {
                username,
                credentials,
            } => {
                accounts::set_password(&self.accounts, username, credentials)?;
                // A new password ends every FAST token (XEP-0484 §6).
                self.revoke_fast(username, None)?;
            }
            Command::FastIssue {
                username,
                agent,
                token,
            } => {
                // Bounded per account: expired tokens go, and past
                // MAX_FAST_CLIENTS other clients the oldest issued goes.
                let mut others: Vec<(u64, u64, sled::IVec)> = Vec::new();
                for kv in self.user_data.scan_prefix(data_key(username, "fast", "")) {
                    let (k, v) = kv?;
                    if k.as_ref() == data_key(username, "fast", agent).as_slice() {
                        continue;
                    }
                    let t: fast::FastTokens = serde_json::from_slice(&v)?;
                    others.push((t.current.expiry_ms, t.current.issued_ms, k));
                }
                others.sort_by_key(|o| o.1);
                let expired = others.iter().filter(|o| o.0 <= token.issued_ms).count();
                let excess = others
                    .len()
                    .saturating_sub(expired)
                    .saturating_sub(MAX_FAST_CLIENTS - 1);
                let mut excess_left = excess;
                for (expiry, _, k) in &others {
                    if *expiry <= token.issued_ms {
                        self.user_data.remove(k)?;
                    } else if excess_left > 0 {
                        excess_left -= 1;
                        self.user_data.remove(k)?;
                    }
                }
                let k = data_key(username, "fast", agent);
                let previous = self
                    .fast_tokens(username, agent)?
                    .map(|t| t.current)
                    .filter(|p| p.expiry_ms > token.issued_ms);
                let entry = fast::FastTokens {
                    current: token.clone(),
                    previous,
                };
                self.user_data.insert(k, serde_json::to_vec(&entry)?)?;
            }
            Command::SessionKick { .. } => {}
            Command::SpamReport { report, max } => {
                let prefix = data_key(REPORTS, "report", "");
                let kept: Vec<sled::IVec> = self
                    .user_data
                    .scan_prefix(&prefix)
                    .keys()
                    .collect::<Result<_, _>>()?;
                for old in kept.iter().take((kept.len() + 1).saturating_sub(*max)) {
                    self.user_data.remove(old)?;
                }
                let k = data_key(
                    REPORTS,
                    "report",
                    &format!("{:020}\0{}\0{}", report.at_ms, report.reporter, report.jid),
                );
                self.user_data.insert(k, serde_json::to_vec(report)?)?;
            }
            Command::FastRevoke { username, agent } => {
                self.revoke_fast(username, agent.as_deref())?;
            }
            Command::DeleteAccount { username } => {
                accounts::delete(&self.accounts, username)?;
                self.archive.drop_used(&roster::prefix(username))?;
                let p = roster::prefix(username);
                for tree in [
                    &self.roster,
                    &self.offline,
                    &self.blocklist,
                    &self.user_data,
                ] {
                    for k in tree.scan_prefix(&p).keys() {
                        tree.remove(k?)?;
                    }
                }
                self.archive.remove_prefix(&p)?;
                self.roster_versions.remove(username)?;
            }
            Command::RosterPut {
                username,
                item,
                expect,
            } => {
                if let Some(e) = expect {
                    if roster::get(&self.roster, username, &item.jid)? != e.item {
                        return Err(StateError::Superseded(format!(
                            "roster item {} of {username}",
                            item.jid
                        )));
                    }
                }
                let k = roster::key(username, &item.jid);
                if item.is_empty() {
                    self.roster.remove(k)?;
                } else {
                    self.roster.insert(k, serde_json::to_vec(item)?)?;
                }
                applied.roster_version = roster::bump_version(&self.roster_versions, username)?;
            }
            Command::RosterDelete { username, jid } => {
                self.roster.remove(roster::key(username, jid))?;
                applied.roster_version = roster::bump_version(&self.roster_versions, username)?;
            }
            Command::OfflinePush {
                username,
                stanza,
                quota,
                quota_bytes,
            } => {
                let p = roster::prefix(username);
                let (mut count, mut bytes) = (0usize, 0usize);
                for v in self.offline.scan_prefix(&p).values() {
                    count += 1;
                    bytes += v?.len();
                }
                if count >= *quota || (*quota_bytes > 0 && bytes + stanza.len() > *quota_bytes) {
                    return Err(StateError::QuotaExceeded(username.clone()));
                }
                let seq = match index {
                    LogIndex::Raft(i) => i,
                    LogIndex::Local => self.db.generate_id()?,
                };
                let mut k = p;
                k.extend_from_slice(&seq.to_be_bytes());
                self.offline.insert(k, stanza.as_bytes())?;
            }
            Command::OfflineDrop {
                username,
                count,
                keys,
            } => {
                let p = roster::prefix(username);
                for seq in keys {
                    let mut k = p.clone();
                    k.extend_from_slice(&seq.to_be_bytes());
                    self.offline.remove(k)?;
                }
                let first: Vec<_> = self.offline.scan_prefix(&p).keys().take(*count).collect();
                for k in first {
                    self.offline.remove(k?)?;
                }
            }
            Command::Block { username, jids } => {
                for j in jids {
                    self.blocklist.insert(roster::key(username, j), &[])?;
                }
            }
            Command::Unblock { username, jids } => {
                if jids.is_empty() {
                    for k in self.blocklist.scan_prefix(roster::prefix(username)).keys() {
                        self.blocklist.remove(k?)?;
                    }
                }
                for j in jids {
                    self.blocklist.remove(roster::key(username, j))?;
                }
            }
            Command::SetVcard { username, vcard } => {
                self.user_data
                    .insert(data_key(username, "vcard", ""), vcard.as_bytes())?;
            }
            Command::SetPrivate { username, key, xml } => {
                self.user_data
                    .insert(data_key(username, "private", key), xml.as_bytes())?;
            }
            Command::SessionBind { record, replaces } => {
                // A bind that lands after a newer one for the same address
                // (its proposer gave up, the log kept it) changes nothing;
                // nor does a hand-over whose holder was replaced meanwhile.
                if let Some(old) = sessions::get(&self.sessions, &record.jid)? {
                    let same = old.node == record.node && old.sid == record.sid;
                    let holder_gone = replaces.is_some_and(|h| h != (old.node, old.sid));
                    if !same && (old.bound_at > record.bound_at || holder_gone) {
                        return Err(StateError::Superseded(record.jid.clone()));
                    }
                }
                applied.displaced = sessions::put(&self.sessions, record)?
                    .filter(|old| old.node != record.node || old.sid != record.sid);
            }
            Command::SessionPresence { record } => {
                // Only for a session that is still bound; keeps its sm_id.
                if let Some(old) = sessions::get(&self.sessions, &record.jid)? {
                    if old.node == record.node && old.sid == record.sid {
                        let mut r = record.clone();
                        r.sm_id = old.sm_id;
                        r.bound_at = old.bound_at;
                        sessions::put(&self.sessions, &r)?;
                    }
                }
            }
            Command::SessionResumable {
                jid,
                node,
                sid,
                sm_id,
            } => {
                if let Some(mut old) = sessions::get(&self.sessions, jid)? {
                    if old.node == *node && old.sid == *sid {
                        old.sm_id = Some(sm_id.clone());
                        sessions::put(&self.sessions, &old)?;
                    }
                }
            }
            Command::SessionUnbind { jid, node, sid } => {
                sessions::remove(&self.sessions, jid, *node, *sid)?
            }
            Command::PurgeNode { node, before } => {
                applied.purged = sessions::purge_node(&self.sessions, *node, *before)?;
                for kv in self.components.iter() {
                    let (k, v) = kv?;
                    let (n, _): (u64, u64) = serde_json::from_slice(&v)?;
                    if n == *node {
                        self.components.remove(&k)?;
                        if k.contains(&b'@') {
                            applied
                                .released
                                .push(String::from_utf8_lossy(&k).into_owned());
                        }
                    }
                }
            }
            Command::Pubsub { owner, node, op } => {
                applied.pubsub = pubsub::apply(&self.user_data, owner, node, op)?;
            }
            Command::UploadStored { id, record } => {
                if !uploads::store(&self.user_data, id, record)? {
                    return Err(StateError::Superseded(format!("upload {id} exists")));
                }
            }
            Command::UploadExpire { before_ms } => {
                uploads::expire(&self.user_data, *before_ms)?;
            }
            Command::CapsNotify { ver, notify } => {
                // A checked hash means the same everywhere: kept as first
                // learned. (Per-account entries, keyed `bare#ver`, follow
                // their client's latest answer.)
                let verified = !ver.contains('#');
                if !(verified && self.user_data.get(caps_key(ver))?.is_some()) {
                    self.user_data
                        .insert(caps_key(ver), serde_json::to_vec(notify)?)?;
                }
            }
            Command::ComponentBind { domain, node, sid } => {
                self.components
                    .insert(domain.as_bytes(), serde_json::to_vec(&(node, sid))?)?;
            }
            Command::HostedClaim { entity, node } => {
                if entity.contains('@') && self.component(entity).is_none() {
                    self.components
                        .insert(entity.as_bytes(), serde_json::to_vec(&(node, 0u64))?)?;
                }
            }
            Command::HostedMove { entity, from, to } => {
                if self.hosted_owner(entity) == Some(*from) {
                    self.components
                        .insert(entity.as_bytes(), serde_json::to_vec(&(to, 0u64))?)?;
                }
            }
            Command::HostedWrite {
                entity,
                node,
                writes,
                archive,
                quota_bytes,
                replace,
            } => {
                if self.hosted_owner(entity) != Some(*node) {
                    return Err(StateError::Superseded(entity.clone()));
                }
                if writes.iter().any(|(k, v)| k == "meta" && v.is_none()) {
                    self.components.remove(entity.as_bytes())?;
                }
                if entity.contains('@') {
                    let own: Vec<&ArchiveEntry> =
                        archive.iter().filter(|e| &e.user == entity).collect();
                    self.append_archive(&own, *quota_bytes, &mut applied, Some(entity))?;
                    for r in replace.iter().filter(|r| &r.user == entity) {
                        if let Some(delta) = archive::replace(&self.archive, entity, r.id, &r.xml)?
                        {
                            let used = (self.archive_bytes(entity)? as i64 + delta).max(0) as u64;
                            self.archive.set_used(&roster::prefix(entity), used)?;
                        }
                    }
                    for (key, value) in writes {
                        let k = data_key(entity, "hosted", key);
                        match value {
                            Some(v) => {
                                self.user_data.insert(k, v.as_bytes())?;
                            }
                            None => {
                                self.user_data.remove(k)?;
                            }
                        }
                    }
                }
            }
            Command::ComponentUnbind { domain, node, sid } => {
                if self.component(domain) == Some((*node, *sid)) {
                    self.components.remove(domain.as_bytes())?;
                }
            }
            Command::ArchiveAppend {
                entries,
                quota_bytes,
            } => {
                let all: Vec<&ArchiveEntry> = entries.iter().collect();
                self.append_archive(&all, *quota_bytes, &mut applied, None)?;
            }
            Command::SetArchivePrefs { username, prefs } => {
                self.user_data.insert(
                    data_key(username, "mam_prefs", ""),
                    serde_json::to_vec(prefs)?,
                )?;
            }
            Command::ArchiveExpire { micros } => {
                // Every archive: accounts', and those of hosted entities
                // (group-chat rooms), which are counted in `archive_used`
                // once the tail has moved.
                self.archive.fold_all()?;
                let mut users: std::collections::BTreeSet<String> =
                    self.list_accounts()?.into_iter().collect();
                for k in self.archive.used_tree().iter().keys() {
                    users.insert(String::from_utf8_lossy(&k?).into_owned());
                }
                for u in users {
                    if archive::expire(&self.archive, &u, *micros)? > 0 {
                        let used = archive::bytes(&self.archive, &u)? as u64;
                        self.archive.set_used(&roster::prefix(&u), used)?;
                    }
                }
            }
            Command::ArchivePurge { username } => {
                self.archive.remove_prefix(&roster::prefix(username))?;
                self.archive.drop_used(&roster::prefix(username))?;
            }
            Command::PushEnable {
                username,
                registration,
                max,
            } => {
                let r = registration;
                let k = data_key(username, "push", &push::key(&r.jid, &r.node));
                if !self.user_data.contains_key(&k)?
                    && self.push_registrations(username)?.len() >= *max
                {
                    return Err(StateError::QuotaExceeded(format!(
                        "{username} has {max} push registrations"
                    )));
                }
                self.user_data.insert(k, serde_json::to_vec(r)?)?;
            }
            Command::PushDisable {
                username,
                jid,
                node,
            } => {
                for r in self.push_registrations(username)? {
                    if &r.jid == jid && node.as_ref().is_none_or(|n| n == &r.node) {
                        self.user_data.remove(data_key(
                            username,
                            "push",
                            &push::key(&r.jid, &r.node),
                        ))?;
                    }
                }
            }
            Command::SetLastActivity {
                username,
                unix_secs,
                status,
            } => {
                let v = serde_json::to_vec(&(unix_secs, status))?;
                self.user_data.insert(data_key(username, "last", ""), v)?;
            }
        }
        Ok(applied)
    }

    /// A stored upload.
    pub fn upload(&self, id: &str) -> Option<uploads::UploadRecord> {
        uploads::get(&self.user_data, id).ok().flatten()
    }

    /// Bytes `owner`'s uploads take.
    pub fn upload_usage(&self, owner: &str) -> u64 {
        uploads::usage(&self.user_data, owner).unwrap_or(0)
    }

    /// One of `owner`'s publish-subscribe nodes.
    pub fn pubsub_node(&self, owner: &str, node: &str) -> Option<pubsub::NodeMeta> {
        pubsub::node(&self.user_data, owner, node).ok().flatten()
    }

    /// The names of `owner`'s publish-subscribe nodes.
    pub fn pubsub_nodes(&self, owner: &str) -> Vec<String> {
        pubsub::nodes(&self.user_data, owner).unwrap_or_default()
    }

    /// A node's items, oldest first: (item id, payload XML).
    pub fn pubsub_items(&self, owner: &str, node: &str) -> Vec<(String, String)> {
        pubsub::items(&self.user_data, owner, node).unwrap_or_default()
    }

    /// The `+notify` interests of a capabilities verification string, once
    /// learned (XEP-0115).
    pub fn caps_notify(&self, ver: &str) -> Option<Vec<String>> {
        let v = self.user_data.get(caps_key(ver)).ok().flatten()?;
        serde_json::from_slice(&v).ok()
    }

    /// The session bound to `full`, read from the table by bare JID kept in
    /// memory (every message to a full JID asks).
    pub fn session(&self, full: &str) -> Option<SessionRecord> {
        self.sessions_of_shared(crate::base::jid_text::bare(full))
            .iter()
            .find(|r| r.jid == full)
            .cloned()
    }

    /// The node and connection serving component `domain`, if one is connected.
    pub fn component(&self, domain: &str) -> Option<(u64, u64)> {
        let v = self.components.get(domain.as_bytes()).ok()??;
        serde_json::from_slice(&v).ok()
    }

    /// XEP-0313: messages into their owners' archives, in commit order
    /// (`archive::place`); `hosted`: an entity that owns an archive of its
    /// own (a group-chat room), besides accounts.
    fn append_archive(
        &self,
        entries: &[&ArchiveEntry],
        quota_bytes: u64,
        applied: &mut Applied,
        hosted: Option<&str>,
    ) -> Result<(), StateError> {
        // Each owner's last position and byte count come from
        // memory (`archive::Heads`); the byte count goes with each message
        // into the archive's tail (`ArchiveStore::append_message`), and
        // into a tree of its own when the owner's pairs move.
        let mut heads = self.archive_heads.lock();
        let r = self.append_archive_at(&mut heads, entries, quota_bytes, applied, hosted);
        if r.is_err() {
            // The tree may hold part of what failed: read it again.
            heads.clear();
            if let Err(e) = self.archive.reload() {
                tracing::error!(error = %e, "reading the archive's tail again");
            }
        }
        r
    }

    fn append_archive_at(
        &self,
        heads: &mut std::collections::HashMap<String, archive::Head>,
        entries: &[&ArchiveEntry],
        quota_bytes: u64,
        applied: &mut Applied,
        hosted: Option<&str>,
    ) -> Result<(), StateError> {
        let commit_order = self
            .archive_commit_order
            .load(std::sync::atomic::Ordering::Acquire);
        for e in entries.iter().copied() {
            // Written after the account was deleted: nobody's (an owner
            // with a head exists: deleting an account clears them).
            let owner = hosted == Some(e.user.as_str());
            let head = match heads.get_mut(e.user.as_str()) {
                Some(h) => h,
                None if owner || self.account_exists(&e.user) => {
                    let h = archive::head(&self.archive, &e.user, self.archive_bytes(&e.user)?)?;
                    heads.entry(e.user.clone()).or_insert(h)
                }
                None => {
                    applied.refused.push(e.id);
                    continue;
                }
            };
            // In commit order (archive::place); a replayed entry
            // is already there and counts once.
            let mut moved = *head;
            let writes = match archive::place_at_head(&self.archive, e, &mut moved, commit_order)? {
                archive::Placed::Replay => continue,
                archive::Placed::Refused => {
                    tracing::warn!(user = %e.user, id = e.id, "an archive id that names another message; not archived");
                    applied.refused.push(e.id);
                    continue;
                }
                archive::Placed::Write(w) => w,
            };
            let size: u64 = writes.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
            if quota_bytes > 0 && head.used + size > quota_bytes {
                applied.refused.push(e.id);
                continue;
            }
            *head = moved;
            head.used += size;
            self.archive.append_message(writes, head.used)?;
        }
        self.archive.end_append()?;
        Ok(())
    }

    /// A hosted entity's records (`Command::HostedWrite`), by key.
    pub fn hosted_records(&self, entity: &str) -> Vec<(String, String)> {
        let prefix = data_key(entity, "hosted", "");
        self.user_data
            .scan_prefix(&prefix)
            .filter_map(|kv| kv.ok())
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect()
    }

    /// The claimed entities of a hosted `domain` (`Command::HostedClaim`).
    pub fn hosted_entities(&self, domain: &str) -> Vec<String> {
        let suffix = format!("@{}", domain.to_ascii_lowercase());
        self.components
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .filter(|k| k.ends_with(&suffix))
            .collect()
    }

    /// One of a hosted entity's records.
    pub fn hosted_record(&self, entity: &str, key: &str) -> Option<String> {
        self.user_data
            .get(data_key(entity, "hosted", key))
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// The node that owns a hosted entity (`Command::HostedClaim`).
    /// Hosted entities (group-chat rooms, `name@service`) claimed by a
    /// node now, with that node.
    pub fn hosted_claims(&self) -> Vec<(String, u64)> {
        self.components
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let k = String::from_utf8(k.to_vec()).ok()?;
                let (node, _): (u64, u64) = serde_json::from_slice(&v).ok()?;
                k.contains('@').then_some((k, node))
            })
            .collect()
    }

    pub fn hosted_owner(&self, entity: &str) -> Option<u64> {
        self.component(entity).map(|(node, _)| node)
    }

    pub fn all_sessions(&self) -> Vec<SessionRecord> {
        self.sessions
            .iter()
            .values()
            .filter_map(|v| v.ok().and_then(|v| serde_json::from_slice(&v).ok()))
            .collect()
    }

    /// The sessions of `bare` in the table (from memory once read: every
    /// message asks, for carbons and routing).
    pub fn sessions_of(&self, bare: &str) -> Vec<SessionRecord> {
        self.sessions_of_shared(bare).as_ref().clone()
    }

    /// [`Self::sessions_of`] as kept in memory, not copied (read on every
    /// message that carbons or routing by bare JID look at).
    pub fn sessions_of_shared(&self, bare: &str) -> std::sync::Arc<Vec<SessionRecord>> {
        self.session_cache
            .get_or_read(bare, || {
                sessions::of(&self.sessions, bare).map(std::sync::Arc::new)
            })
            .unwrap_or_default()
    }

    pub fn roster_item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>, StateError> {
        roster::get(&self.roster, user, contact)
    }

    pub fn roster(&self, user: &str) -> Result<Vec<RosterItem>, StateError> {
        roster::list(&self.roster, user)
    }

    pub fn roster_version(&self, user: &str) -> Result<u64, StateError> {
        roster::version(&self.roster_versions, user)
    }

    /// Queued offline messages, oldest first.
    pub fn offline(&self, user: &str) -> Result<Vec<Xml>, StateError> {
        Ok(self
            .offline_keyed(user)?
            .into_iter()
            .map(|(_, xml)| xml)
            .collect())
    }

    /// Queued messages with the keys `OfflineDrop` takes, oldest first.
    pub fn offline_keyed(&self, user: &str) -> Result<Vec<(u64, Xml)>, StateError> {
        let p = roster::prefix(user);
        self.offline
            .scan_prefix(&p)
            .map(|kv| {
                let (k, v) = kv?;
                let mut seq = [0u8; 8];
                if k.len() == p.len() + 8 {
                    seq.copy_from_slice(&k[p.len()..]);
                }
                Ok((
                    u64::from_be_bytes(seq),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    /// Messages waiting offline, all accounts (metrics; walks the keys).
    pub fn offline_total(&self) -> u64 {
        self.offline.len() as u64
    }

    /// Bytes in every account's archive (metrics).
    pub fn archive_bytes_total(&self) -> u64 {
        self.archive
            .used_all()
            .map(|all| all.iter().map(|(_, n)| n).sum())
            .unwrap_or(0)
    }

    /// How many messages wait for `user`.
    pub fn offline_count(&self, user: &str) -> u64 {
        self.offline
            .scan_prefix(roster::prefix(user))
            .keys()
            .count() as u64
    }

    /// Whether `user` has messages waiting.
    pub fn has_offline(&self, user: &str) -> bool {
        self.offline
            .scan_prefix(roster::prefix(user))
            .next()
            .is_some()
    }

    pub fn blocklist(&self, user: &str) -> Result<Vec<String>, StateError> {
        let p = roster::prefix(user);
        self.blocklist
            .scan_prefix(&p)
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?[p.len()..]).into_owned()))
            .collect()
    }

    /// Whether `user` blocks anyone at all. Most users block nobody: that
    /// much is known from memory. A read that fails counts as blocking
    /// someone (the list is asked).
    pub fn blocks_anyone(&self, user: &str) -> bool {
        self.blocks_anyone
            .get_or_read(user, || {
                self.blocklist
                    .scan_prefix(roster::prefix(user))
                    .next()
                    .transpose()
                    .map(|k| k.is_some())
            })
            .unwrap_or(true)
    }

    pub fn is_blocked(&self, user: &str, jid: &str) -> bool {
        self.blocks_anyone(user)
            && self
                .blocklist
                .contains_key(roster::key(user, jid))
                .unwrap_or(false)
    }

    pub fn vcard(&self, user: &str) -> Result<Option<Xml>, StateError> {
        Ok(self
            .user_data
            .get(data_key(user, "vcard", ""))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// How many private XML fragments (XEP-0049) `user` stores.
    pub fn private_count(&self, user: &str) -> Result<usize, StateError> {
        let mut n = 0;
        for k in self
            .user_data
            .scan_prefix(data_key(user, "private", ""))
            .keys()
        {
            k?;
            n += 1;
        }
        Ok(n)
    }

    pub fn private(&self, user: &str, key: &str) -> Result<Option<Xml>, StateError> {
        Ok(self
            .user_data
            .get(data_key(user, "private", key))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Abuse reports (XEP-0377), oldest first.
    pub fn spam_reports(&self) -> Vec<SpamReport> {
        self.user_data
            .scan_prefix(data_key(REPORTS, "report", ""))
            .values()
            .filter_map(|v| v.ok().and_then(|v| serde_json::from_slice(&v).ok()))
            .collect()
    }

    /// `user`'s FAST tokens for the client `agent` (XEP-0484).
    pub fn fast_tokens(
        &self,
        user: &str,
        agent: &str,
    ) -> Result<Option<fast::FastTokens>, StateError> {
        match self.user_data.get(data_key(user, "fast", agent))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    fn revoke_fast(&self, user: &str, agent: Option<&str>) -> Result<(), StateError> {
        let keys: Vec<sled::IVec> = match agent {
            Some(a) => vec![data_key(user, "fast", a).into()],
            None => self
                .user_data
                .scan_prefix(data_key(user, "fast", ""))
                .keys()
                .collect::<Result<_, _>>()?,
        };
        for k in keys {
            self.user_data.remove(k)?;
        }
        Ok(())
    }

    /// `user`'s push registrations (XEP-0357).
    pub fn push_registrations(
        &self,
        user: &str,
    ) -> Result<Vec<push::PushRegistration>, StateError> {
        let mut out = Vec::new();
        for v in self
            .user_data
            .scan_prefix(data_key(user, "push", ""))
            .values()
        {
            out.push(serde_json::from_slice(&v?)?);
        }
        Ok(out)
    }

    pub fn last_activity(&self, user: &str) -> Result<Option<(u64, String)>, StateError> {
        match self.user_data.get(data_key(user, "last", ""))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// One page of `user`'s archive (XEP-0313).
    pub fn archive_page(
        &self,
        user: &str,
        q: &archive::PageQuery,
    ) -> Result<archive::Page, StateError> {
        archive::page(&self.archive, user, q)
    }

    /// The furthest position of a message of `user` placed past its id,
    /// among ids `lo..=hi` (0: none).
    pub fn archive_moved_reach(&self, user: &str, lo: u64, hi: u64) -> Result<u64, StateError> {
        archive::moved_reach(&self.archive, user, lo, hi)
    }

    /// Whether archived messages of the commands applied from now on go in
    /// commit order (see the field).
    pub fn set_archive_commit_order(&self, on: bool) {
        self.archive_commit_order
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// Where the message with stanza-id `id` sits in `user`'s archive's
    /// commit order (None: not there).
    pub fn archive_position(&self, user: &str, id: u64) -> Result<Option<u64>, StateError> {
        archive::position(&self.archive, user, id)
    }

    /// The first and last archived ids of `user`.
    pub fn archive_ends(&self, user: &str) -> Result<Option<(u64, u64)>, StateError> {
        archive::ends(&self.archive, user)
    }

    /// Bytes `user`'s archive holds (what the quota counts).
    /// One message of `owner`'s archive by its stanza-id: (with, xml).
    pub fn archived(&self, owner: &str, id: u64) -> Option<(String, String)> {
        archive::get(&self.archive, owner, id)
            .ok()
            .flatten()
            .map(|a| (a.with, a.xml))
    }

    pub fn archive_bytes(&self, user: &str) -> Result<u64, StateError> {
        Ok(self.archive.used(&roster::prefix(user))?)
    }

    /// `user`'s archive preferences, if they set any.
    pub fn archive_prefs(&self, user: &str) -> Result<Option<ArchivePrefs>, StateError> {
        self.prefs_cache.get_or_read(user, || {
            match self.user_data.get(data_key(user, "mam_prefs", ""))? {
                Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
                None => Ok(None),
            }
        })
    }

    pub fn credentials(&self, username: &str) -> Result<Option<Credentials>, StateError> {
        accounts::get(&self.accounts, username)
    }

    /// Whether `username` has an account, kept in memory (every message to
    /// an account asks; a failed read is `false` and not kept).
    pub fn account_exists(&self, username: &str) -> bool {
        self.account_cache
            .get_or_read(username, || self.accounts.contains_key(username))
            .unwrap_or(false)
    }

    pub fn list_accounts(&self) -> Result<Vec<String>, StateError> {
        accounts::list(&self.accounts)
    }

    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = State::open(dir.path()).expect("open");
        (dir, s)
    }

    fn push(s: &State, index: u64, text: &str) {
        let cmd = Command::OfflinePush {
            username: "bob".into(),
            stanza: format!("<message><body>{text}</body></message>"),
            quota: 100,
            quota_bytes: 0,
        };
        s.apply_unflushed(LogIndex::Raft(index), &cmd)
            .expect("push");
    }

    /// Relays skip waiting for archive appends only: the check on the
    /// replicated bytes knows an append, and nothing else, as one.
    #[test]
    fn archive_appends_are_known_from_their_bytes() {
        let append = Command::ArchiveAppend {
            entries: vec![archived("bob", 1, "hi")],
            quota_bytes: 0,
        };
        let purge = Command::ArchivePurge {
            username: "bob".into(),
        };
        let bytes = |c: &Command| serde_json::to_vec(c).expect("encode");
        assert!(Command::is_archive_append(&bytes(&append)));
        assert!(!Command::is_archive_append(&bytes(&purge)));
        assert!(!Command::is_archive_append(b"{\"OfflinePush\":{}}"));
    }

    /// XEP-0160 storage is capped by bytes as well as by count; an entry
    /// logged before the byte cap existed (no field) has none.
    #[test]
    fn offline_storage_is_capped_by_bytes() {
        let (_d, s) = state();
        let big = |i: u64| Command::OfflinePush {
            username: "bob".into(),
            stanza: format!(
                "<message id='{i}'><body>{}</body></message>",
                "x".repeat(400)
            ),
            quota: 100,
            quota_bytes: 1000,
        };
        s.apply_unflushed(LogIndex::Raft(1), &big(1))
            .expect("first");
        s.apply_unflushed(LogIndex::Raft(2), &big(2))
            .expect("second");
        assert!(matches!(
            s.apply_unflushed(LogIndex::Raft(3), &big(3)),
            Err(StateError::QuotaExceeded(_))
        ));
        let old: Command = serde_json::from_str(
            r#"{"OfflinePush":{"username":"bob","stanza":"<message/>","quota":100}}"#,
        )
        .expect("an old log entry still parses");
        s.apply_unflushed(LogIndex::Raft(4), &old)
            .expect("no byte cap");
        assert_eq!(s.offline_keyed("bob").expect("read").len(), 3);
    }

    /// Replicas agree byte for byte: offline keys are the Raft index of
    /// the entry that stored them, whatever else each node's sled did, and
    /// a drop names the keys it delivered.
    #[test]
    fn offline_keys_are_the_same_on_every_replica() {
        let (_d1, a) = state();
        let (_d2, b) = state();
        // One replica has used its local id generator (it did other things).
        for _ in 0..5 {
            a.db().generate_id().expect("id");
        }
        for s in [&a, &b] {
            push(s, 7, "one");
            push(s, 9, "two");
            push(s, 12, "three");
        }
        let keys = |s: &State| -> Vec<u64> {
            s.offline_keyed("bob")
                .expect("read")
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(&a), vec![7, 9, 12]);
        assert_eq!(keys(&a), keys(&b));
        let drop = Command::OfflineDrop {
            username: "bob".into(),
            count: 0,
            keys: vec![7, 12],
        };
        for s in [&a, &b] {
            s.apply_unflushed(LogIndex::Raft(13), &drop).expect("drop");
        }
        assert_eq!(keys(&a), vec![9]);
        assert_eq!(
            a.offline("bob").expect("read"),
            b.offline("bob").expect("read")
        );
    }

    fn bind(jid: &str, node: u64, sid: u64, bound_at: u64) -> Command {
        Command::SessionBind {
            record: SessionRecord {
                jid: jid.into(),
                node,
                sid,
                available: false,
                priority: 0,
                sm_id: None,
                bound_at,
                caps: None,
            },
            replaces: None,
        }
    }

    /// A bind that lands after a newer one for the same address (its
    /// proposer timed out, a later leader committed it) changes nothing.
    #[test]
    fn a_stale_bind_does_not_displace_a_newer_session() {
        let (_d, s) = state();
        let newer = bind("bob@localhost/phone", 2, 5, 2_000);
        let applied = s.apply_unflushed(LogIndex::Raft(1), &newer).expect("bind");
        assert_eq!(applied.displaced, None);
        let stale = bind("bob@localhost/phone", 1, 9, 1_000);
        assert!(matches!(
            s.apply_unflushed(LogIndex::Raft(2), &stale),
            Err(StateError::Superseded(_))
        ));
        let rec = s.session("bob@localhost/phone").expect("still bound");
        assert_eq!((rec.node, rec.sid), (2, 5));
        // A newer bind still replaces it (and says whom it displaced).
        let later = bind("bob@localhost/phone", 3, 1, 3_000);
        let applied = s.apply_unflushed(LogIndex::Raft(3), &later).expect("bind");
        assert_eq!(applied.displaced.map(|d| d.node), Some(2));
    }

    /// Two subscription changes computed from the same roster item (each
    /// side of a pair answering the other at once): the second to land
    /// finds the item changed and is refused, to be computed again,
    /// instead of overwriting the first.
    #[test]
    fn a_roster_put_computed_from_an_old_item_is_refused() {
        let (_d, s) = state();
        let mut item = RosterItem::new("bob@localhost");
        let put = |item: &RosterItem, expect: Option<RosterItem>| Command::RosterPut {
            username: "alice".into(),
            item: item.clone(),
            expect: Some(ExpectedItem { item: expect }),
        };
        item.sub.to = true;
        s.apply_unflushed(LogIndex::Raft(1), &put(&item, None))
            .expect("first change");
        let mut other = RosterItem::new("bob@localhost");
        other.sub.from = true;
        assert!(matches!(
            s.apply_unflushed(LogIndex::Raft(2), &put(&other, None)),
            Err(StateError::Superseded(_))
        ));
        let now = s.roster_item("alice", "bob@localhost").expect("read");
        assert_eq!(
            now.as_ref().map(|i| (i.sub.to, i.sub.from)),
            Some((true, false))
        );
        // Computed again from what is stored, it lands.
        let mut again = now.clone().expect("stored");
        again.sub.from = true;
        s.apply_unflushed(LogIndex::Raft(3), &put(&again, now))
            .expect("recomputed change");
        let both = s
            .roster_item("alice", "bob@localhost")
            .expect("read")
            .expect("item");
        assert!(both.sub.to && both.sub.from);
    }

    /// A node's start-up purge of its own old records, applied late (its
    /// proposer saw a snapshot land and gave up; the log kept it), drops
    /// only what was bound before the node started, not the sessions it
    /// bound since. A purge without a time (a dead node) drops them all.
    #[test]
    fn a_late_start_up_purge_keeps_sessions_bound_since() {
        let (_d, s) = state();
        s.apply_unflushed(LogIndex::Raft(1), &bind("old@localhost/a", 3, 1, 1_000))
            .expect("bind before the restart");
        s.apply_unflushed(LogIndex::Raft(2), &bind("bob@localhost/b", 3, 1, 5_000))
            .expect("bind after the restart");
        let purge = Command::PurgeNode {
            node: 3,
            before: Some(4_000),
        };
        let applied = s.apply_unflushed(LogIndex::Raft(3), &purge).expect("purge");
        let gone: Vec<_> = applied.purged.iter().map(|r| r.jid.as_str()).collect();
        assert_eq!(gone, vec!["old@localhost/a"]);
        assert!(s.session("old@localhost/a").is_none());
        assert!(s.session("bob@localhost/b").is_some());
        // A record written before the field existed reads as "all of them".
        let old: Command =
            serde_json::from_str(r#"{"PurgeNode":{"node":3}}"#).expect("old form reads");
        let applied = s.apply_unflushed(LogIndex::Raft(4), &old).expect("purge");
        assert_eq!(applied.purged.len(), 1);
        assert!(s.session("bob@localhost/b").is_none());
    }

    /// A session handed over twice (a drain gave up on its first target
    /// and pushed it to a second): whichever copy binds first wins; the
    /// other, landing later, changes nothing, however new its clock.
    #[test]
    fn a_hand_over_lands_only_in_place_of_its_holder() {
        let (_d, s) = state();
        let jid = "bob@localhost/phone";
        s.apply_unflushed(LogIndex::Raft(1), &bind(jid, 3, 25, 1_000))
            .expect("bind on node 3");
        let handed = |node, sid, bound_at| match bind(jid, node, sid, bound_at) {
            Command::SessionBind { record, .. } => Command::SessionBind {
                record,
                replaces: Some((3, 25)),
            },
            _ => unreachable!(),
        };
        // The second push's copy (node 2) binds first.
        let applied = s
            .apply_unflushed(LogIndex::Raft(2), &handed(2, 35, 3_000))
            .expect("second copy binds");
        assert_eq!(applied.displaced.map(|d| (d.node, d.sid)), Some((3, 25)));
        // The first push's copy (node 1) lands late, with a newer clock.
        assert!(matches!(
            s.apply_unflushed(LogIndex::Raft(3), &handed(1, 40, 5_000)),
            Err(StateError::Superseded(_))
        ));
        let rec = s.session(jid).expect("bound");
        assert_eq!((rec.node, rec.sid), (2, 35));
        // Where the holder's record is gone (its node was purged), a
        // hand-over binds.
        let (_d2, s2) = state();
        s2.apply_unflushed(LogIndex::Raft(1), &handed(1, 40, 5_000))
            .expect("free address");
    }

    /// The store at `dir` opened again after it was dropped: sled lets go
    /// of its lock from a background thread, so the first tries may find
    /// it still held.
    fn reopen(dir: &std::path::Path) -> State {
        for _ in 0..200 {
            match State::open(dir) {
                Err(StateError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(25))
                }
                other => return other.expect("reopen the store"),
            }
        }
        panic!("the store at {} stayed locked for 5 s", dir.display())
    }

    fn archived(user: &str, id: u64, text: &str) -> ArchiveEntry {
        ArchiveEntry {
            user: user.into(),
            id,
            with: "bob@localhost".into(),
            xml: format!("<message><body>{text}</body></message>"),
        }
    }

    /// A room's archive (a hosted entity's): a moderated message's
    /// tombstone replaces it in place (XEP-0425), and retention expires
    /// the room's old messages as it does an account's.
    #[test]
    fn a_rooms_archive_takes_tombstones_and_expires() {
        let (_d, s) = state();
        let at = archive::ArchiveId::at;
        let room = "lobby@conference.localhost";
        s.apply(&Command::HostedClaim {
            entity: room.into(),
            node: 1,
        })
        .unwrap();
        let write = |archive: Vec<ArchiveEntry>, replace: Vec<ArchiveEntry>| {
            s.apply(&Command::HostedWrite {
                entity: room.into(),
                node: 1,
                writes: Vec::new(),
                archive,
                quota_bytes: 0,
                replace,
            })
            .unwrap()
        };
        write(
            vec![archived(room, at(10), "old"), archived(room, at(30), "bad")],
            Vec::new(),
        );
        let before = s.archive_bytes(room).unwrap();
        write(Vec::new(), vec![archived(room, at(30), "")]);
        let (with, xml) = s.archived(room, at(30)).expect("still there");
        assert_eq!(with, "bob@localhost");
        assert!(
            xml.contains("<body></body>") && !xml.contains("bad"),
            "{xml}"
        );
        assert_eq!(s.archive_bytes(room).unwrap(), before - 3);
        // Replacing what is not there changes nothing.
        write(Vec::new(), vec![archived(room, at(99), "x")]);
        assert!(s.archived(room, at(99)).is_none());
        s.apply(&Command::ArchiveExpire { micros: 20 }).unwrap();
        assert!(s.archived(room, at(10)).is_none(), "expired");
        assert!(s.archived(room, at(30)).is_some());
    }

    #[test]
    fn the_archive_quota_refuses_past_its_bytes_and_expiry_frees_them() {
        let (_d, s) = state();
        let at = archive::ArchiveId::at;
        let append = |entries: Vec<ArchiveEntry>, quota_bytes: u64| {
            s.apply(&Command::ArchiveAppend {
                entries,
                quota_bytes,
            })
            .unwrap()
        };
        // Nobody's archive: an entry for a user without an account.
        let orphan = append(vec![archived("alice", at(5), "x")], 0);
        assert_eq!(orphan.refused, vec![at(5)]);
        s.apply(&Command::CreateAccount {
            username: "alice".into(),
            credentials: crate::model::sasl::Credentials::new("pw").unwrap(),
        })
        .unwrap();
        let one = append(vec![archived("alice", at(10), "a")], 0);
        assert!(one.refused.is_empty());
        let size = s.archive_bytes("alice").unwrap();
        assert!(size > 0);
        // Room for one more of the same size, not two.
        let two = append(
            vec![
                archived("alice", at(20), "b"),
                archived("alice", at(30), "c"),
            ],
            size * 2,
        );
        assert_eq!(two.refused, vec![at(30)]);
        assert_eq!(s.archive_bytes("alice").unwrap(), size * 2);
        // The same entry applied again (a replayed log entry) counts once.
        append(vec![archived("alice", at(20), "b")], 0);
        assert_eq!(s.archive_bytes("alice").unwrap(), size * 2);
        s.apply(&Command::ArchiveExpire { micros: 15 }).unwrap();
        assert_eq!(s.archive_ends("alice").unwrap(), Some((at(20), at(20))));
        assert_eq!(s.archive_bytes("alice").unwrap(), size);
        s.apply(&Command::ArchivePurge {
            username: "alice".into(),
        })
        .unwrap();
        assert_eq!(s.archive_ends("alice").unwrap(), None);
        assert_eq!(s.archive_bytes("alice").unwrap(), 0);
    }

    /// Appends placed from what is kept in memory (`archive::Heads`) land
    /// where reading the tree would have put them: in commit order, under
    /// an alias when committed after a later id, counted once when applied
    /// again; the same after a restart (nothing in memory) and after a
    /// purge (memory cleared).
    #[test]
    fn archive_appends_placed_from_memory_match_the_tree() {
        let (d, s) = state();
        account(&s, "alice");
        let at = archive::ArchiveId::at;
        let append = |s: &State, ids: &[u64]| {
            s.set_archive_commit_order(true);
            let entries = ids
                .iter()
                .map(|i| archived("alice", at(*i), &format!("m{i}")))
                .collect();
            s.apply(&Command::ArchiveAppend {
                entries,
                quota_bytes: 0,
            })
            .unwrap()
        };
        let order = |s: &State| -> Vec<u64> {
            let q = archive::PageQuery {
                lower: std::ops::Bound::Unbounded,
                upper: std::ops::Bound::Unbounded,
                with: None,
                ids: None,
                id_within: (0, u64::MAX),
                max: 100,
                skip: 0,
                backward: false,
            };
            let page = s.archive_page("alice", &q).unwrap();
            page.items.iter().map(|a| a.id / at(1)).collect()
        };
        append(&s, &[10, 20]);
        let one = s.archive_bytes("alice").unwrap() / 2;
        append(&s, &[15]);
        append(&s, &[15]);
        append(&s, &[30]);
        assert_eq!(order(&s), [10, 20, 15, 30]);
        let bytes = s.archive_bytes("alice").unwrap();
        assert!(bytes > 4 * one, "the alias counts too: {bytes}");
        // Applied again in one batch (a replayed log entry): nothing changes.
        append(&s, &[10, 20, 15, 30]);
        assert_eq!(s.archive_bytes("alice").unwrap(), bytes);
        drop(s);
        // From a cold start, the tree is read again (with its alias).
        let s = reopen(d.path());
        assert_eq!(order(&s), [10, 20, 15, 30]);
        append(&s, &[25, 40]);
        assert_eq!(order(&s), [10, 20, 15, 30, 25, 40]);
        s.apply(&Command::ArchivePurge {
            username: "alice".into(),
        })
        .unwrap();
        append(&s, &[50]);
        assert_eq!(order(&s), [50]);
        assert_eq!(s.archive_bytes("alice").unwrap(), one);
        // An account deleted and made again starts from nothing.
        s.apply(&Command::DeleteAccount {
            username: "alice".into(),
        })
        .unwrap();
        assert_eq!(append(&s, &[6]).refused, vec![at(6)]);
        account(&s, "alice");
        append(&s, &[7]);
        assert_eq!(order(&s), [7]);
    }

    /// The sessions of a bare JID, read from memory once read, follow every
    /// change to its records: binds, unbinds, a node's purge.
    #[test]
    fn sessions_read_from_memory_follow_every_change() {
        let (_d, s) = state();
        let jids = |s: &State| -> Vec<String> {
            let mut v: Vec<String> = s
                .sessions_of("bob@localhost")
                .into_iter()
                .map(|r| r.jid)
                .collect();
            v.sort();
            v
        };
        assert!(jids(&s).is_empty());
        s.apply(&bind("bob@localhost/phone", 1, 1, 1_000)).unwrap();
        assert_eq!(jids(&s), ["bob@localhost/phone"]);
        s.apply(&bind("bob@localhost/laptop", 2, 1, 1_000)).unwrap();
        assert_eq!(jids(&s), ["bob@localhost/laptop", "bob@localhost/phone"]);
        s.apply(&Command::SessionUnbind {
            jid: "bob@localhost/phone".into(),
            node: 1,
            sid: 1,
        })
        .unwrap();
        assert_eq!(jids(&s), ["bob@localhost/laptop"]);
        s.apply(&Command::PurgeNode {
            node: 2,
            before: None,
        })
        .unwrap();
        assert!(jids(&s).is_empty());
        // A reader that began before a change keeps nothing it read.
        let stale = s.session_cache.get_or_read("carol@localhost", || {
            s.apply(&bind("carol@localhost/tablet", 3, 1, 1_000))
                .unwrap();
            Ok::<_, ()>(std::sync::Arc::new(Vec::new()))
        });
        assert!(stale.unwrap().is_empty());
        let carol = s.sessions_of("carol@localhost");
        assert_eq!(carol.len(), 1, "{carol:?}");
    }

    /// Blocklists and archive preferences read from memory follow every
    /// change to them.
    #[test]
    fn blocks_and_archive_prefs_read_from_memory_follow_every_change() {
        let (_d, s) = state();
        account(&s, "alice");
        assert!(!s.is_blocked("alice", "eve@localhost"));
        s.apply(&Command::Block {
            username: "alice".into(),
            jids: vec!["eve@localhost".into()],
        })
        .unwrap();
        assert!(s.is_blocked("alice", "eve@localhost"));
        assert!(!s.is_blocked("alice", "bob@localhost"));
        s.apply(&Command::Unblock {
            username: "alice".into(),
            jids: vec![],
        })
        .unwrap();
        assert!(!s.is_blocked("alice", "eve@localhost"));
        assert_eq!(s.archive_prefs("alice").unwrap(), None);
        let prefs = ArchivePrefs {
            default: "never".into(),
            always: vec!["bob@localhost".into()],
            never: vec![],
        };
        s.apply(&Command::SetArchivePrefs {
            username: "alice".into(),
            prefs: prefs.clone(),
        })
        .unwrap();
        assert_eq!(s.archive_prefs("alice").unwrap(), Some(prefs));
        s.apply(&Command::DeleteAccount {
            username: "alice".into(),
        })
        .unwrap();
        assert_eq!(s.archive_prefs("alice").unwrap(), None);
    }

    fn account(s: &State, name: &str) {
        s.apply(&Command::CreateAccount {
            username: name.into(),
            credentials: crate::model::sasl::Credentials::new("pw").unwrap(),
        })
        .unwrap();
    }

    fn archive_many(s: &State, user: &str, from: u64, n: u64) {
        let entries = (from..from + n)
            .map(|i| archived(user, archive::ArchiveId::at(i), &format!("m{i}")))
            .collect();
        s.apply(&Command::ArchiveAppend {
            entries,
            quota_bytes: 0,
        })
        .unwrap();
    }

    /// A snapshot written while commands go on being applied holds the
    /// state as it was when it was fixed: writes before the walk reaches a
    /// key (removed, changed, added) and writes racing the walk alike.
    #[test]
    fn a_snapshot_is_the_state_at_its_start_whatever_is_applied_meanwhile() {
        let (_d, s) = state();
        let s = Arc::new(s);
        for u in ["alice", "bob", "carol"] {
            account(&s, u);
        }
        for batch in 0..20 {
            archive_many(&s, "alice", batch * 1000, 1000);
        }
        archive_many(&s, "bob", 0, 500);
        // Fewer than an owner's move: these stay in the archive's tail.
        archive_many(&s, "alice", 50_000, 10);
        archive_many(&s, "carol", 0, 10);
        assert!(s.archive.tail_len() >= 20);
        push(&s, 1, "before");
        let expected = s.export().unwrap();
        let carol_bytes = s.archive_bytes("carol").unwrap();
        assert!(carol_bytes > 0);
        s.begin_snapshot().unwrap();
        // Before the walk starts: a removal, a change, an addition.
        s.apply(&Command::ArchivePurge {
            username: "bob".into(),
        })
        .unwrap();
        s.apply(&Command::DeleteAccount {
            username: "carol".into(),
        })
        .unwrap();
        account(&s, "dave");
        push(&s, 2, "after");
        // Racing the walk: more of everything, from this (the "driver") thread.
        let writer = {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                s.write_snapshot(&mut out).map(|_| out)
            })
        };
        for batch in 0..20 {
            archive_many(&s, "alice", 100_000 + batch * 100, 100);
            s.apply(&Command::ArchiveExpire {
                micros: batch * 1000,
            })
            .unwrap();
        }
        let streamed = writer.join().unwrap().expect("written");
        assert!(streamed.starts_with(snapshot::stream::MAGIC));
        // Restored elsewhere, it is exactly the state at `begin_snapshot`.
        let (_d2, other) = state();
        other.import_from(&mut &streamed[..]).expect("restored");
        assert_eq!(other.export().unwrap(), expected);
        assert_eq!(other.archive_bytes("carol").unwrap(), carol_bytes);
        // And the recording stopped: another snapshot can start.
        s.begin_snapshot().unwrap();
        let mut again = Vec::new();
        s.write_snapshot(&mut again).unwrap();
        other
            .import(&again)
            .expect("inline streamed form restores too");
        assert_eq!(other.export().unwrap(), s.export().unwrap());
    }

    #[test]
    fn a_second_snapshot_waits_for_the_first_and_a_corrupt_stream_is_an_error() {
        let (_d, s) = state();
        s.begin_snapshot().unwrap();
        assert!(matches!(s.begin_snapshot(), Err(DumpError::Busy)));
        let mut out = Vec::new();
        s.write_snapshot(&mut out).unwrap();
        let (_d2, other) = state();
        for cut in [1, 5, out.len() - 1] {
            assert!(other.import_from(&mut &out[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = out.clone();
        bad[4] = b'X';
        assert!(other.import_from(&mut &bad[..]).is_err());
    }
}
