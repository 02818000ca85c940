//! The one task that drives raft-rs: tick, step, propose, and the Ready
//! loop in the order the raft-rs docs (examples/five_mem_node) require:
//! send messages, apply a snapshot, apply committed entries, append new
//! entries, persist the hard state, flush when `must_sync`, and only then
//! send the messages that depend on that durable write; then advance.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::prelude::*;
use raft::{RawNode, StateRole};
use slog::o;
use tokio::sync::{mpsc, oneshot, watch};

use crate::batch::{self, LogFormats};
use crate::storage::{SledStorage, StoreError};
use crate::transport::Transport;
use crate::{ClusterConfig, ClusterError, Cmd, Status};

type Reply = oneshot::Sender<Result<Vec<u8>, ClusterError>>;
type PeersReply = oneshot::Sender<Result<Vec<(u64, String)>, ClusterError>>;

/// At most this many commands (proposals, raft messages) are taken into
/// one round of the Ready loop: enough to share an fsync among a burst,
/// few enough that ticks and answers are not held back.
const GROUP_MAX: usize = 256;

/// A read request (Raft ReadIndex) not answered after this long is taken
/// as dropped (raft-rs drops one it cannot serve yet: no leader, or a
/// leader that has not committed in its term), and the reads waiting
/// behind it go out in a request of their own.
const READ_RETRY: Duration = Duration::from_millis(200);

/// A proposal not yet applied: who waits for each of its commands (None:
/// the proposer gave up) and the entry, proposed again under the same id
/// if the leader changes (the dedup window makes that safe).
struct Pending {
    replies: Vec<Option<Reply>>,
    entry: Vec<u8>,
    /// A batch entry ([`batch`]) rather than a single command.
    batch: bool,
}

/// Log entries dropped per round, or a `COMPACT_STEP`th of those left
/// when that is more ([`compaction_step`]). Dropping a thousand at once (a
/// sled remove each; a large batch entry is a file of its own) held the
/// driver, and every commit behind it, for up to 33 ms at 60,000 msg/s
/// with the archive on; 32 a round took 0.7 to 2 ms (median), 9 at most.
const COMPACT_STEP: u64 = 32;

/// One round's compaction: once `compact_after` entries up to `upto` (the
/// applied index, or what the slowest follower has) can go, they are to
/// go, [`COMPACT_STEP`] per round (or that fraction of those left, when
/// more), and never past `upto` as it is now (a
/// follower may fall behind meanwhile). Returns where the compaction under
/// way stops, and the index to drop entries up to this round, if any.
fn compaction_step(first: u64, upto: u64, compact_after: u64, to: u64) -> (u64, Option<u64>) {
    let to = if upto > first && upto - first >= compact_after {
        to.max(upto)
    } else {
        to
    };
    let now = to.min(upto);
    // A step grows with what is left, so that rounds appending more than
    // a step each (a follower catching up) cannot outrun it for good.
    let step = COMPACT_STEP.max((now + 1).saturating_sub(first) / COMPACT_STEP);
    (to, (now >= first).then(|| now.min(first + step - 1)))
}

/// A conf-change entry's context: who proposed it and the node's address.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChangeContext {
    proposal: u128,
    address: String,
}

/// Reads (Raft ReadIndex) asked for: waiting to go out, and sent.
#[derive(Default)]
struct Reads {
    next: u64,
    /// Asked for since the last request went out.
    waiting: Vec<oneshot::Sender<u64>>,
    /// Requests sent and not answered: context -> who waits for each.
    sent: HashMap<Vec<u8>, Vec<oneshot::Sender<u64>>>,
    /// When the newest request (context: `next`) went out.
    last_at: Option<Instant>,
}

pub struct Driver {
    id: u64,
    raw: RawNode<SledStorage>,
    store: SledStorage,
    transport: Transport,
    status: watch::Sender<Status>,
    tick: Duration,
    compact_after: u64,
    /// Where the compaction under way stops (see [`COMPACT_STEP`]).
    compact_to: u64,
    next_proposal: u64,
    /// Distinguishes this process's proposal ids from an earlier life's.
    epoch: u64,
    /// Proposals not yet applied, by proposal id.
    pending: HashMap<u128, Pending>,
    /// Commands taken this round, proposed together at its end.
    proposals: Vec<(Reply, Vec<u8>)>,
    /// Which log formats the voters read (batches only once all do).
    formats: Arc<LogFormats>,
    last_leader: u64,
    pending_changes: HashMap<u128, PeersReply>,
    /// Reads (Raft ReadIndex) asked for, coalesced ([`Driver::issue_reads`]).
    reads: Reads,
    /// The newest applied entry relays are ordered after (`Status::ordered`).
    ordered: u64,
}

impl Driver {
    pub fn new(
        cfg: &ClusterConfig,
        store: SledStorage,
        mut transport: Transport,
        status: watch::Sender<Status>,
        formats: Arc<LogFormats>,
    ) -> Result<Self, raft::Error> {
        let config = Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: store.applied(),
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Config::default()
        };
        let logger = slog::Logger::root(
            slog::Drain::fuse(crate::raft_log::RaftLog { node: cfg.id }),
            o!(),
        );
        let mut raw = RawNode::new(&config, store.clone(), &logger)?;
        transport.set_peers(&store.peers().unwrap_or_default());
        // A lone voter need not wait out an election timeout.
        if raw
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .collect::<Vec<_>>()
            == vec![cfg.id]
        {
            raw.campaign()?;
        }
        let ordered = store.applied();
        if store.batched_since() != 0 {
            formats.set_batched();
        }
        store.state_machine().batched_since(store.batched_since());
        Ok(Driver {
            id: cfg.id,
            raw,
            store,
            transport,
            status,
            tick: cfg.tick,
            compact_after: cfg.compact_after,
            compact_to: 0,
            next_proposal: 0,
            epoch: process_epoch(cfg.id),
            pending: HashMap::new(),
            proposals: Vec::new(),
            formats,
            last_leader: 0,
            pending_changes: HashMap::new(),
            reads: Reads::default(),
            ordered,
        })
    }

    /// Unique across the cluster and across restarts of this node: the
    /// dedup window outlives the process, so a counter that starts again
    /// at zero would make new proposals look like old ones (and be skipped).
    fn proposal_id(&mut self) -> u128 {
        self.next_proposal += 1;
        (u128::from(self.epoch) << 64) | u128::from(self.next_proposal)
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.raw.tick();
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        self.handle(cmd);
                        // Group commit: whatever else is already waiting
                        // (proposals, raft messages) joins this round, so
                        // one Ready, one append and one fsync cover them all.
                        for _ in 1..GROUP_MAX {
                            match rx.try_recv() {
                                Ok(cmd) => self.handle(cmd),
                                Err(_) => break,
                            }
                        }
                        self.propose_taken();
                    }
                    None => break,
                },
                _ = stop.changed() => break,
            }
            if let Err(e) = self.ready_round() {
                // Storage errors leave the node unusable: stop loudly.
                tracing::error!(error = %e, "raft storage failed; this node stops");
                break;
            }
            self.repropose_on_leader_change();
            self.publish_status();
        }
        for (_, p) in self.pending.drain() {
            for r in p.replies.into_iter().flatten() {
                let _ = r.send(Err(ClusterError::Stopped));
            }
        }
        for (r, _) in self.proposals.drain(..) {
            let _ = r.send(Err(ClusterError::Stopped));
        }
    }

    /// Whether this round's proposals go in one batch entry: only once
    /// every voter reads batches (the leader knows; a follower hears it
    /// from the leader).
    fn batching(&self) -> bool {
        let agreed = if self.raw.raft.state == StateRole::Leader {
            let voters: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
            self.formats.settle(self.id, &voters)
        } else {
            self.formats.step_down();
            self.formats.leader_says()
        };
        // Once the log has batches it keeps them: older nodes are fenced.
        agreed >= batch::FORMAT || self.store.batched_since() != 0
    }

    /// Propose what this round took: one entry per command, or (once all
    /// voters read them) batch entries of many.
    fn propose_taken(&mut self) {
        let batching = self.batching();
        let taken = std::mem::take(&mut self.proposals);
        if !batching {
            for (reply, data) in taken {
                self.propose_single(reply, data);
            }
            return;
        }
        let mut chunk: Vec<(Reply, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        for (reply, data) in taken {
            if !chunk.is_empty()
                && (chunk.len() >= batch::MAX_COMMANDS || bytes + data.len() > batch::MAX_BYTES)
            {
                self.propose_batch(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += data.len();
            chunk.push((reply, data));
        }
        if !chunk.is_empty() {
            self.propose_batch(chunk);
        }
    }

    fn propose_single(&mut self, reply: Reply, data: Vec<u8>) {
        let id = self.proposal_id();
        let mut entry = id.to_be_bytes().to_vec();
        entry.extend_from_slice(&data);
        match self.raw.propose(vec![], entry.clone()) {
            Ok(()) => {
                self.pending.insert(
                    id,
                    Pending {
                        replies: vec![Some(reply)],
                        entry,
                        batch: false,
                    },
                );
            }
            Err(e) => {
                let _ = reply.send(Err(ClusterError::Rejected(e.to_string())));
            }
        }
    }

    fn propose_batch(&mut self, chunk: Vec<(Reply, Vec<u8>)>) {
        let id = self.proposal_id();
        let commands: Vec<&[u8]> = chunk.iter().map(|(_, d)| d.as_slice()).collect();
        let entry = batch::encode(id, &commands);
        let replies: Vec<Option<Reply>> = chunk.into_iter().map(|(r, _)| Some(r)).collect();
        match self.raw.propose(vec![], entry.clone()) {
            Ok(()) => {
                self.pending.insert(
                    id,
                    Pending {
                        replies,
                        entry,
                        batch: true,
                    },
                );
            }
            Err(e) => {
                for r in replies.into_iter().flatten() {
                    let _ = r.send(Err(ClusterError::Rejected(e.to_string())));
                }
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Step(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!(error = %e, "raft step rejected a message");
                }
            }
            Cmd::Propose(data, reply) => self.proposals.push((reply, data)),
            Cmd::AddNode(node, address, reply) => {
                self.change(ConfChangeType::AddNode, node, address, reply)
            }
            Cmd::RemoveNode(node, reply) => {
                self.change(ConfChangeType::RemoveNode, node, String::new(), reply)
            }
            Cmd::Unreachable(node) => self.raw.report_unreachable(node),
            // raft-rs keeps a follower paused in Snapshot state until told
            // how the snapshot went; without this a lost ack stalls it forever.
            Cmd::SnapshotSent(node, ok) => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(node, status);
            }
            Cmd::TransferLeader(node) => self.raw.transfer_leader(node),
            Cmd::ReadIndex(reply) => self.reads.waiting.push(reply),
            Cmd::SetPeers(peers) => {
                if let Err(e) = self.store.set_peers(&peers) {
                    tracing::error!(error = %e, "cannot store peers");
                }
                self.transport.set_peers(&peers);
            }
        }
    }

    fn change(&mut self, kind: ConfChangeType, node: u64, address: String, reply: PeersReply) {
        let proposal = self.proposal_id();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.set_node_id(node);
        let mut cc = ConfChangeV2::default();
        cc.changes = vec![single].into();
        let ctx = ChangeContext { proposal, address };
        cc.context = serde_json::to_vec(&ctx).unwrap_or_default().into();
        match self.raw.propose_conf_change(vec![], cc) {
            Ok(()) => {
                self.pending_changes.insert(proposal, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ClusterError::Rejected(e.to_string())));
            }
        }
    }

    /// Send the reads waiting, handle the Ready, and send the reads that
    /// waited for one answered in it (their request goes out at once, not
    /// at the next round).
    fn ready_round(&mut self) -> Result<(), StoreError> {
        self.issue_reads();
        self.on_ready()?;
        if self.issue_reads() {
            self.on_ready()?;
        }
        Ok(())
    }

    /// Ask raft-rs for one read index on behalf of every read waiting,
    /// unless a request sent less than [`READ_RETRY`] ago is unanswered:
    /// those wait for its answer, then go out together. Each request costs
    /// the leader a heartbeat to every voter and their answers, so one per
    /// login (SASL reads before it checks a password) was thousands of
    /// messages a second. One request serves every read asked before it
    /// went out: the index it returns is at least the commit index when
    /// each was asked. Returns whether a request went out.
    fn issue_reads(&mut self) -> bool {
        let reads = &mut self.reads;
        // Callers that gave up leave closed senders.
        reads.waiting.retain(|r| !r.is_closed());
        if reads.waiting.is_empty() {
            return false;
        }
        reads.sent.retain(|_, w| {
            w.retain(|r| !r.is_closed());
            !w.is_empty()
        });
        let newest_out = reads.last_at.is_some_and(|at| at.elapsed() < READ_RETRY)
            && reads.sent.contains_key(&reads.next.to_be_bytes()[..]);
        if newest_out {
            return false;
        }
        reads.next += 1;
        let ctx = reads.next.to_be_bytes().to_vec();
        reads
            .sent
            .insert(ctx.clone(), std::mem::take(&mut reads.waiting));
        reads.last_at = Some(Instant::now());
        self.raw.read_index(ctx);
        true
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        // A batch entry in the log (ours or the leader's): from now on
        // older nodes are fenced, before any message that carries it goes
        // out (see `batch::LogFormats::fenced`).
        if !self.formats.batched()
            && ready
                .entries()
                .iter()
                .any(|e| e.get_entry_type() == EntryType::EntryNormal && batch::is_batch(&e.data))
        {
            self.formats.set_batched();
        }
        // 1. Messages that need no durable write go out at once.
        if !ready.messages().is_empty() {
            self.transport.send(ready.take_messages());
        }
        // Confirmed reads: the index to wait for.
        for rs in ready.take_read_states() {
            for r in self.reads.sent.remove(&rs.request_ctx).unwrap_or_default() {
                let _ = r.send(rs.index);
            }
        }
        // 2. A snapshot from the leader replaces our state.
        if !ready.snapshot().is_empty() {
            // Installing reads the whole file, on the driver's own thread:
            // the mesh and relays go on meanwhile.
            self.store.apply_snapshot(ready.snapshot())?;
            self.transport.set_peers(&self.store.peers()?);
            self.ordered = self.store.applied();
            if self.store.batched_since() != 0 {
                self.formats.set_batched();
            }
            self.store
                .state_machine()
                .batched_since(self.store.batched_since());
            // Entries folded into the snapshot are never applied one by one
            // here, so proposals waiting for them would wait forever.
            for (_, p) in self.pending.drain() {
                for r in p.replies.into_iter().flatten() {
                    let _ = r.send(Err(ClusterError::Indeterminate));
                }
            }
        }
        // 3. Committed entries are applied.
        let committed = ready.take_committed_entries();
        self.apply(committed)?;
        // 4. New entries are appended and 5. the hard state persisted...
        if !ready.entries().is_empty() {
            self.store.append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            self.store.set_hard_state(hs)?;
        }
        // ...and made durable before anything that promises them is sent.
        if ready.must_sync() {
            self.store.flush()?;
        }
        if !ready.persisted_messages().is_empty() {
            self.transport.send(ready.take_persisted_messages());
        }
        // 6. Advance, then handle what that releases.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut ordered = 0;
        let mut replies = Vec::new();
        let mut unsure = Vec::new();
        for entry in entries {
            if entry.data.is_empty() {
                continue; // a new leader's empty entry
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    if let Some((id, commands)) = batch::decode(&entry.data) {
                        // The log's first batch: the switch, recorded
                        // with the applied state (see `batch::sequence`).
                        if self.store.batched_since() == 0 {
                            self.store.set_batched_since(entry.index)?;
                            self.store.state_machine().batched_since(entry.index);
                            self.formats.set_batched();
                            tracing::info!(
                                index = entry.index,
                                "the log holds batch entries from here on"
                            );
                        }
                        let since = self.store.batched_since();
                        let sm = self.store.state_machine().clone();
                        if commands
                            .iter()
                            .any(|c| !c.is_empty() && sm.orders_relays(c))
                        {
                            ordered = entry.index;
                        }
                        // Applied once however often it was proposed; each
                        // command under a number of its own. The dedup
                        // record keeps no outputs (a batch's are many): the
                        // first copy answered its proposers, and a second
                        // copy's (none in practice) hear "indeterminate".
                        if self.store.dedup_get(id)?.is_some() {
                            if let Some(p) = self.pending.remove(&id) {
                                unsure.extend(p.replies.into_iter().flatten());
                            }
                            continue;
                        }
                        let outs: Vec<Vec<u8>> = commands
                            .iter()
                            .enumerate()
                            .map(|(i, c)| {
                                if c.is_empty() {
                                    Vec::new() // its proposer gave up
                                } else {
                                    sm.apply(batch::sequence(entry.index, i, since), c)
                                }
                            })
                            .collect();
                        self.store.dedup_put(entry.index, id, &[])?;
                        if let Some(p) = self.pending.remove(&id) {
                            for (r, out) in p.replies.into_iter().zip(outs) {
                                if let Some(r) = r {
                                    replies.push((r, out));
                                }
                            }
                        }
                        continue;
                    }
                    // Too short for a proposal id, or a batch cut short:
                    // applied as nothing, on every node alike.
                    if entry.data.len() < 16 || batch::is_batch(&entry.data) {
                        continue;
                    }
                    let (id, cmd) = entry.data.split_at(16);
                    if self.store.state_machine().orders_relays(cmd) {
                        ordered = entry.index;
                    }
                    let id = u128::from_be_bytes(id.try_into().unwrap_or([0; 16]));
                    // The same proposal twice (re-proposed after a leader
                    // change) is applied once; every node decides alike.
                    let out = match self.store.dedup_get(id)? {
                        Some(first) => first,
                        None => {
                            let seq = batch::sequence(entry.index, 0, self.store.batched_since());
                            let out = self.store.state_machine().apply(seq, cmd);
                            self.store.dedup_put(entry.index, id, &out)?;
                            out
                        }
                    };
                    if let Some(r) = self
                        .pending
                        .remove(&id)
                        .and_then(|p| p.replies.into_iter().next().flatten())
                    {
                        replies.push((r, out));
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    ordered = entry.index;
                    self.apply_change(&entry)?
                }
            }
        }
        // Applied never runs ahead of the commit index on disk: a restart
        // between this flush and the next hard-state write would otherwise
        // find applied > committed, which raft-rs refuses.
        if self.store.hard_state()?.commit < last {
            self.store.set_commit(last)?;
        }
        self.store.set_applied(last)?;
        // No flush here: what is answered is already durable. raft-rs hands
        // out only entries this node has persisted (`min(committed,
        // persisted)`, and every Ready with entries is flushed before it
        // advances), and the entry is on a majority's disk. The applied
        // state is written behind it, and the next flush (the next round
        // with entries, or sled's own every 500 ms) makes it durable. sled
        // recovers a prefix of its writes (up to its stable log sequence
        // number), so after a crash the applied index, the state, the
        // dedup window and any compaction agree, and the entries after that
        // index are applied again from the log, as on any restart.
        // Published before the answers: whoever acts on an answer (relays a
        // stanza) sends an applied index that covers it.
        // Only now that `applied` covers it (never ahead of it).
        self.ordered = self.ordered.max(ordered);
        let ordered = self.ordered;
        self.status.send_if_modified(|s| {
            let newer = s.applied < last;
            if newer {
                s.applied = last;
                s.ordered = ordered;
            }
            newer
        });
        for (r, out) in replies {
            let _ = r.send(Ok(out));
        }
        for r in unsure {
            let _ = r.send(Err(ClusterError::Indeterminate));
        }
        Ok(())
    }

    fn apply_change(&mut self, entry: &Entry) -> Result<(), StoreError> {
        // We only ever propose ConfChangeV2 (design.md: membership by ConfChangeV2).
        if entry.get_entry_type() != EntryType::EntryConfChangeV2 {
            tracing::warn!(index = entry.index, "ignoring a v1 conf change entry");
            return Ok(());
        }
        let cc = ConfChangeV2::parse_from_bytes(&entry.data)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(e) => {
                tracing::warn!(error = %e, "conf change not applied");
                return Ok(());
            }
        };
        self.store.set_conf_state(&cs)?;
        let ctx: Option<ChangeContext> = serde_json::from_slice(&cc.context).ok();
        let mut peers = self.store.peers()?;
        for change in cc.changes.iter() {
            let node = change.node_id;
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Some(c) = &ctx {
                        peers.retain(|(id, _)| *id != node);
                        peers.push((node, c.address.clone()));
                    }
                }
                ConfChangeType::RemoveNode => peers.retain(|(id, _)| *id != node),
            }
        }
        peers.sort();
        self.store.set_peers(&peers)?;
        self.transport.set_peers(&peers);
        tracing::info!(?peers, "membership changed");
        if let Some(c) = ctx {
            if let Some(r) = self.pending_changes.remove(&c.proposal) {
                let _ = r.send(Ok(peers));
            }
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        // A snapshot on offer holds compaction back until every follower
        // has what it holds (one installing it needs the entries after it).
        if let Some(held) = self.store.snapshot_hold() {
            let raft = &self.raw.raft;
            if raft.prs().iter().all(|(_, p)| p.matched >= held) {
                self.store.snapshot_delivered();
            }
        }
        let applied = self.store.applied();
        let first = raft::Storage::first_index(&self.store).unwrap_or(1);
        let upto = self.compact_upto(applied);
        let (to, now) = compaction_step(first, upto, self.compact_after, self.compact_to);
        self.compact_to = to;
        if let Some(index) = now {
            self.store.compact(index)?;
        }
        Ok(())
    }

    /// How far the log may be compacted. A leader keeps the entries its
    /// slowest follower still needs, so a follower that fell a little
    /// behind (a busy burst, a restart) catches up from the log instead of
    /// by a snapshot of the whole state; past `KEEP_FOR_LAGGARDS` times
    /// the compaction interval (a node that is gone) it stops waiting.
    fn compact_upto(&self, applied: u64) -> u64 {
        const KEEP_FOR_LAGGARDS: u64 = 100;
        let raft = &self.raw.raft;
        if raft.state != raft::StateRole::Leader {
            return applied;
        }
        let slowest = raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != raft.id)
            .map(|(_, p)| p.matched)
            .min();
        match slowest {
            Some(m) if applied.saturating_sub(m) <= self.compact_after * KEEP_FOR_LAGGARDS => {
                applied.min(m)
            }
            _ => applied,
        }
    }

    /// A proposal forwarded to a leader that then lost its role may be gone:
    /// propose again what is still pending, under the same ids.
    fn repropose_on_leader_change(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader == self.last_leader {
            return;
        }
        self.last_leader = leader;
        if leader == 0 || self.pending.is_empty() {
            return;
        }
        // A proposer that gave up (timed out, answered its client with an
        // error) must not see its command land later: not proposed again.
        let mut dropped = 0;
        for (id, p) in self.pending.iter_mut() {
            let mut changed = false;
            for r in p.replies.iter_mut() {
                if r.as_ref().is_some_and(|r| r.is_closed()) {
                    *r = None;
                    changed = true;
                    dropped += 1;
                }
            }
            // A batch goes again without what its proposers gave up on
            // (same id: if the first one did land, it is applied once).
            if changed && p.batch && p.replies.iter().any(Option::is_some) {
                if let Some((_, commands)) = batch::decode(&p.entry) {
                    let kept: Vec<&[u8]> = commands
                        .iter()
                        .zip(&p.replies)
                        .map(|(c, r)| if r.is_some() { *c } else { &[][..] })
                        .collect();
                    p.entry = batch::encode(*id, &kept);
                }
            }
        }
        self.pending
            .retain(|_, p| p.replies.iter().any(Option::is_some));
        if dropped > 0 {
            tracing::debug!(dropped, "abandoned proposals not proposed again");
        }
        let entries: Vec<Vec<u8>> = self.pending.values().map(|p| p.entry.clone()).collect();
        for e in entries {
            let _ = self.raw.propose(vec![], e);
        }
        if let Err(e) = self.on_ready() {
            tracing::error!(error = %e, "raft storage failed");
        }
    }

    fn publish_status(&self) {
        let r = &self.raw.raft;
        let role = match r.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre-candidate",
        };
        let s = Status {
            id: self.id,
            leader: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.store.applied(),
            ordered: self.ordered,
            read_requests: self.reads.next,
            role: role.to_string(),
            peers: self.store.peers().unwrap_or_default(),
            active: if r.state == StateRole::Leader {
                let mut a: Vec<u64> = r
                    .prs()
                    .iter()
                    .filter(|(_, p)| p.recent_active)
                    .map(|(id, _)| *id)
                    .collect();
                a.sort_unstable();
                a
            } else {
                Vec::new()
            },
            app: String::new(),
        };
        self.status.send_if_modified(|old| {
            if *old != s {
                *old = s;
                true
            } else {
                false
            }
        });
    }
}

/// The high half of this process's proposal ids: the node id and the start
/// time in nanoseconds, so two lives of one node never share ids.
fn process_epoch(node: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (node << 48) ^ nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Play rounds: the log's first index moves past each compaction.
    fn rounds(mut first: u64, upto: impl Fn(u64) -> u64, after: u64, n: usize) -> Vec<u64> {
        let mut to = 0;
        let mut dropped = Vec::new();
        for round in 0..n {
            let (t, now) = compaction_step(first, upto(round as u64), after, to);
            to = t;
            if let Some(i) = now {
                dropped.push(i + 1 - first);
                first = i + 1;
            }
        }
        dropped
    }

    #[test]
    fn a_compaction_goes_in_steps_until_where_it_was_decided() {
        // 1,000 entries applied, compaction due (past 999 of them): a step
        // a round, 1,000 in all, and nothing more while no more are due.
        let dropped = rounds(1, |_| 1000, 999, 100);
        assert!(dropped.iter().all(|n| *n <= COMPACT_STEP), "{dropped:?}");
        assert_eq!(dropped.iter().sum::<u64>(), 1000);
        assert_eq!(dropped.len() as u64, 1000u64.div_ceil(COMPACT_STEP));
        // Not due yet: nothing goes.
        assert!(rounds(1, |_| 999, 999, 5).is_empty());
        // Entries keep being applied meanwhile: the compaction stops where
        // it was decided, not where the applied index has got to.
        let dropped = rounds(1, |r| 1000 + r, 999, 100);
        assert_eq!(dropped.iter().sum::<u64>(), 1000, "{dropped:?}");
        // Due again later: the next one goes as far as the applied index.
        let dropped = rounds(1, |r| if r < 50 { 1000 } else { 3000 }, 999, 200);
        assert_eq!(dropped.iter().sum::<u64>(), 3000, "{dropped:?}");
        // 2,000 to go: a thirty-second of what is left a round, at most.
        assert!(dropped.iter().all(|n| *n <= 2000 / 32), "{dropped:?}");
    }

    #[test]
    fn rounds_appending_more_than_a_step_do_not_outrun_the_compaction() {
        // 256 entries applied every round (single commands from a node of
        // an older version, or a follower catching up): the log stays
        // bounded instead of growing by 224 entries a round.
        let mut first = 1;
        let mut to = 0;
        for round in 1..=2000u64 {
            let upto = round * 256;
            let (t, now) = compaction_step(first, upto, 1000, to);
            to = t;
            if let Some(i) = now {
                first = i + 1;
            }
            if round > 200 {
                assert!(
                    upto + 1 - first < 20_000,
                    "round {round}: {} left",
                    upto + 1 - first
                );
            }
        }
    }

    #[test]
    fn a_compaction_never_passes_a_follower_that_fell_behind() {
        // Due at 1,000; then the slowest follower is at 300 only: entries
        // past 300 stay until it has them.
        let dropped = rounds(1, |r| if r == 0 { 1000 } else { 300 }, 999, 100);
        assert_eq!(dropped.iter().sum::<u64>(), 300, "{dropped:?}");
        assert!(dropped.iter().all(|n| *n <= COMPACT_STEP));
    }
}
