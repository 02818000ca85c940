//! Many proposals in one Raft entry (group commit), and the gate that
//! turns it on only once every voter can read such entries.
//!
//! A log entry is either a single command (format 1: a 16-byte proposal id,
//! then the command) or a batch (format 2: [`MARK`], the batch's proposal
//! id, the count, then each command with its length). A batch costs one
//! log write, one dedup record and one Raft entry for all its commands,
//! where single entries cost those per command.
//!
//! Each command of a batch is applied under its own sequence number,
//! `index << 16 | position`, so a state machine that keys records by it
//! never sees two commands share one. The log itself records the switch:
//! from the first batch entry on (its index is kept with the log and
//! travels in snapshots), single entries are applied under `index << 16`
//! too, so the numbers never go backwards, whoever proposes what and on
//! every node alike ([`sequence`]).
//!
//! Nodes of a version without batches would misread them, so a node says
//! which formats it reads in every `RaftBatch` it sends; the leader proposes
//! batches only once every voter has said 2, and tells the followers so
//! (`cluster_log_format`), which then batch what they propose too. Once a
//! node has applied a batch entry it keeps batching, and it neither takes
//! nor sends Raft messages from or to a node that says it reads format 1
//! only ([`LogFormats::fenced`]): an older version started again on a
//! cluster that has written batches stays out of it (and says why in its
//! peers' logs) instead of misapplying them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

/// The first 16 bytes of a batch entry (never a proposal id: those carry
/// the node id and the time in their high half).
pub const MARK: u128 = u128::MAX;
/// The newest log format this node reads.
pub const FORMAT: u32 = 2;
/// Most commands in one batch, and most bytes (a bigger command goes alone).
pub const MAX_COMMANDS: usize = 4096;
pub const MAX_BYTES: usize = 4 << 20;

/// Who reads which log format, as the mesh has heard.
#[derive(Default)]
pub struct LogFormats {
    /// What each peer said it reads (in its `RaftBatch`es).
    peers: Mutex<HashMap<u64, u32>>,
    /// What the leader last said every voter reads.
    from_leader: AtomicU32,
    /// What this node says every voter reads (meaningful while it leads).
    agreed: AtomicU32,
    /// Test switch: the format this node says it reads, when not FORMAT
    /// (0: FORMAT), to play a node of an older version.
    pub claim: AtomicU32,
    /// This node has applied a batch entry (the driver sets it).
    batched: AtomicBool,
    /// Peers already logged as fenced (one warning each).
    warned: Mutex<HashSet<u64>>,
}

impl LogFormats {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `RaftBatch` arrived from `from`, saying it reads `format` and
    /// (from the leader) that every voter reads `cluster`.
    pub fn heard(&self, from: u64, format: u32, cluster: u32, leader: u64) {
        self.lock().insert(from, format.max(1));
        if from == leader {
            self.from_leader.store(cluster, Ordering::Release);
        }
    }

    /// The leader's view: every voter but itself has said it reads 2.
    pub fn settle(&self, me: u64, voters: &[u64]) -> u32 {
        let peers = self.lock();
        let agreed = voters
            .iter()
            .filter(|v| **v != me)
            .map(|v| peers.get(v).copied().unwrap_or(1))
            .min()
            .unwrap_or(FORMAT)
            .min(self.own());
        drop(peers);
        self.agreed.store(agreed, Ordering::Release);
        agreed
    }

    /// The format this node says it reads.
    pub fn own(&self) -> u32 {
        match self.claim.load(Ordering::Relaxed) {
            0 => FORMAT,
            f => f,
        }
    }

    /// What this node tells its peers every voter reads (0 unless it
    /// leads).
    pub fn agreed(&self) -> u32 {
        self.agreed.load(Ordering::Acquire)
    }

    /// A follower's view: what the leader said.
    pub fn leader_says(&self) -> u32 {
        self.from_leader.load(Ordering::Acquire)
    }

    /// No longer the leader: say nothing about the voters.
    pub fn step_down(&self) {
        self.agreed.store(0, Ordering::Release);
    }

    /// The log holds batch entries from here on (never undone).
    pub fn set_batched(&self) {
        self.batched.store(true, Ordering::Release);
    }

    pub fn batched(&self) -> bool {
        self.batched.load(Ordering::Acquire)
    }

    /// Whether Raft traffic with `peer`, which last said it reads
    /// `format` (0: it did not say, an older version), must stop: the log
    /// has batch entries that node would misapply. Logged once per peer.
    pub fn fenced(&self, peer: u64, format: u32) -> bool {
        if !self.batched() || format >= FORMAT {
            return false;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.insert(peer) {
            tracing::warn!(
                peer,
                format,
                "node {peer} runs an older version that cannot read this cluster's batch entries; \
                 its Raft messages are refused until it is upgraded"
            );
        }
        true
    }

    /// What `peer` last said it reads (None: not heard from since the
    /// connection to it last failed).
    pub fn peer_format(&self, peer: u64) -> Option<u32> {
        self.lock().get(&peer).copied()
    }

    /// The connection to `peer` failed: it may come back as another
    /// version, so what it said no longer counts.
    pub fn forget(&self, peer: u64) {
        self.lock().remove(&peer);
    }

    /// Whether a message that carries log entries or a snapshot may go to
    /// `peer`: once the log has batches, only to a node heard saying it
    /// reads them since its connection last failed. Heartbeats and votes
    /// always go (its answer says which version it is).
    pub fn may_send_entries(&self, peer: u64) -> bool {
        !self.batched() || self.peer_format(peer).is_some_and(|f| f >= FORMAT)
    }
}

/// Encode a batch entry. `commands` may hold empty slots: commands whose
/// proposer gave up before the batch was proposed again (applied as
/// nothing).
pub fn encode(id: u128, commands: &[&[u8]]) -> Vec<u8> {
    let size: usize = commands.iter().map(|c| c.len() + 4).sum();
    let mut out = Vec::with_capacity(36 + size);
    out.extend_from_slice(&MARK.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(commands.len() as u32).to_be_bytes());
    for c in commands {
        out.extend_from_slice(&(c.len() as u32).to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}

/// Whether `data` is marked as a batch entry (whole or not).
pub fn is_batch(data: &[u8]) -> bool {
    data.starts_with(&MARK.to_be_bytes())
}

/// A batch entry's id and commands; None when `data` is not one (or is
/// cut short, or claims more commands than positions: then the entry is
/// not applied, on every node alike).
pub fn decode(data: &[u8]) -> Option<(u128, Vec<&[u8]>)> {
    let rest = data.strip_prefix(&MARK.to_be_bytes()[..])?;
    let (id, rest) = rest.split_at_checked(16)?;
    let id = u128::from_be_bytes(id.try_into().ok()?);
    let (n, mut rest) = rest.split_at_checked(4)?;
    let n = u32::from_be_bytes(n.try_into().ok()?) as usize;
    if n > MAX_COMMANDS {
        return None;
    }
    let mut commands = Vec::with_capacity(n.min(MAX_COMMANDS));
    for _ in 0..n {
        let (len, r) = rest.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (c, r) = r.split_at_checked(len)?;
        commands.push(c);
        rest = r;
    }
    Some((id, commands))
}

/// The sequence number the state machine sees for command `position` of
/// the entry at `index` (a single entry's command is position 0), given
/// the index of the log's first batch entry (0: none yet). Before it,
/// single entries keep the plain index (as nodes of older versions apply
/// them); from it on every command is `index << 16 | position`, so the
/// numbers only rise.
pub fn sequence(index: u64, position: usize, batched_since: u64) -> u64 {
    if batched_since == 0 || index < batched_since {
        index
    } else {
        (index << 16) | position as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_read_back_and_cut_ones_are_refused() {
        let e = encode(7, &[b"one", b"", b"three"]);
        let (id, cmds) = decode(&e).expect("batch");
        assert_eq!(id, 7);
        assert_eq!(cmds, vec![&b"one"[..], b"", b"three"]);
        assert!(decode(&e[..e.len() - 1]).is_none());
        // A single entry (an id that is not the mark) is not a batch.
        let mut single = 5u128.to_be_bytes().to_vec();
        single.extend_from_slice(b"cmd");
        assert!(decode(&single).is_none());
    }

    #[test]
    fn the_leader_agrees_only_when_every_voter_reads_batches() {
        let f = LogFormats::default();
        assert_eq!(f.settle(1, &[1, 2, 3]), 1, "unheard voters read format 1");
        f.heard(2, 2, 0, 1);
        assert_eq!(f.settle(1, &[1, 2, 3]), 1);
        f.heard(3, 2, 0, 1);
        assert_eq!(f.settle(1, &[1, 2, 3]), 2);
        f.heard(3, 0, 0, 1); // an older version (field absent) restarted
        assert_eq!(f.settle(1, &[1, 2, 3]), 1);
        assert_eq!(f.settle(1, &[1]), 2, "alone");
        f.heard(1, 2, 2, 1);
        assert_eq!(f.leader_says(), 2);
        assert!(sequence(5, 1, 5) > sequence(5, 0, 5) && sequence(6, 0, 5) > sequence(5, 4095, 5));
    }

    #[test]
    fn sequence_numbers_never_go_backwards_across_the_switch() {
        // Single entries 1..=9, the first batch at 10 (four commands), then
        // a single entry at 11 (a new leader that had not settled the
        // gate yet) and a batch at 12.
        let mut seen: Vec<u64> = (1..10).map(|i| sequence(i, 0, 10)).collect();
        seen.extend((0..4).map(|p| sequence(10, p, 10)));
        seen.push(sequence(11, 0, 10));
        seen.extend((0..3).map(|p| sequence(12, p, 10)));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        // Before any batch, a single entry's number is its index, as on
        // nodes of older versions.
        assert_eq!(sequence(7, 0, 0), 7);
        assert_eq!(sequence(7, 0, 10), 7);
    }

    #[test]
    fn a_node_of_an_older_version_is_fenced_once_the_log_has_batches() {
        let f = LogFormats::default();
        assert!(!f.fenced(3, 1), "no batches yet: older nodes take part");
        f.set_batched();
        assert!(f.fenced(3, 1));
        assert!(f.fenced(3, 0), "a node that does not say reads format 1");
        assert!(!f.fenced(3, FORMAT));
        // Entries go only to a node heard saying it reads batches since
        // its connection last failed (it may be back as another version).
        assert!(!f.may_send_entries(3), "not heard from yet");
        f.heard(3, FORMAT, 0, 1);
        assert!(f.may_send_entries(3));
        f.forget(3);
        assert!(!f.may_send_entries(3), "its connection failed");
        // A batch claiming more commands than positions is not one.
        let mut e = encode(1, &[b"x"]);
        e[32..36].copy_from_slice(&(MAX_COMMANDS as u32 + 1).to_be_bytes());
        assert!(decode(&e).is_none() && is_batch(&e));
    }
}
