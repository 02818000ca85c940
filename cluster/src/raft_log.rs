//! raft-rs logs through slog; this drain hands its records to tracing
//! under the `raft` target with the node id, so they read like the rest
//! of the log (`raft: became leader at term 3 node=1`). Role changes are
//! at info, warnings stay warnings, everything else is debug (raft-rs logs
//! every election step and message at info otherwise).

use std::fmt::Write as _;

use slog::{Drain, Level, OwnedKVList, Record, KV};

pub struct RaftLog {
    pub node: u64,
}

/// Collects a record's key-values as ` key=value`.
struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for RaftLog {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        // `values` only repeats raft_id, which `node` says.
        let _ = values;
        let msg = record.msg().to_string();
        let node = self.node;
        let f = fields.0;
        if record.level().is_at_least(Level::Warning) {
            tracing::warn!(target: "raft", node, "{msg}{f}");
        } else if msg.starts_with("became ") {
            tracing::info!(target: "raft", node, "{msg}{f}");
        } else {
            tracing::debug!(target: "raft", node, "{msg}{f}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fields_without_panicking() {
        let log = slog::Logger::root(RaftLog { node: 7 }.fuse(), slog::o!("raft_id" => 7u64));
        slog::info!(log, "became leader at term {}", 3; "term" => 3u64);
        slog::debug!(log, "sending message"; "to" => 2u64);
        slog::warn!(log, "something odd");
    }
}
