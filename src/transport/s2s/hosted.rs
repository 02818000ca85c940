//! The node's side of hosted services (`services::Host`): where a
//! service's answers go, who owns an entity, claiming one through Raft,
//! and passing a stanza to its owner over the mesh.

use std::sync::{Arc, Weak};

use crate::base::xml::{ns, Element};
use crate::model::state::Command;
use crate::transport::context::TransportCtx;

struct NodeHost {
    ctx: Weak<TransportCtx>,
    node: u64,
}

/// The host a service is given with a stanza on this node.
pub fn host(ctx: &TransportCtx) -> Option<Arc<dyn crate::im::services::Host>> {
    let me = ctx.arc()?;
    Some(Arc::new(NodeHost {
        ctx: Arc::downgrade(&me),
        node: ctx.node_id(),
    }))
}

impl crate::im::services::Host for NodeHost {
    fn send(&self, stanza: Element) {
        match self.ctx.upgrade() {
            Some(ctx) => super::from_hosted(&ctx, stanza),
            None => tracing::info!("hosted stanza dropped: the node is stopping"),
        }
    }

    fn node(&self) -> u64 {
        self.node
    }

    fn owner(&self, entity: &str) -> Option<u64> {
        self.ctx.upgrade()?.state.hosted_owner(entity)
    }

    fn claim(&self, entity: &str, then: Box<dyn FnOnce(Option<u64>) + Send>) {
        let Some(ctx) = self.ctx.upgrade() else {
            return then(None);
        };
        let entity = entity.to_string();
        let cmd = Command::HostedClaim {
            entity: entity.clone(),
            node: self.node,
        };
        let rt = ctx.replicator.runtime().clone();
        rt.spawn(async move {
            match ctx.replicator.commit_async(&cmd).await {
                Ok(_) => then(ctx.state.hosted_owner(&entity)),
                Err(e) => {
                    tracing::warn!(%entity, error = %e, "hosted entity not claimed: no commit");
                    then(None)
                }
            }
        });
    }

    fn relay(&self, node: u64, domain: &str, stanza: &Element, hops: u8) {
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        crate::routing::route::relay(
            &ctx,
            node,
            &crate::routing::route::Relay::Hosted {
                domain: domain.to_string(),
                xml: stanza.to_xml(ns::CLIENT),
                hops,
            },
        );
    }

    fn load(&self, entity: &str) -> Vec<(String, String)> {
        match self.ctx.upgrade() {
            Some(ctx) => ctx.state.hosted_records(entity),
            None => Vec::new(),
        }
    }

    fn load_one(&self, entity: &str, key: &str) -> Option<String> {
        self.ctx.upgrade()?.state.hosted_record(entity, key)
    }

    fn entities(&self, domain: &str) -> Vec<String> {
        match self.ctx.upgrade() {
            Some(ctx) => ctx.state.hosted_entities(domain),
            None => Vec::new(),
        }
    }

    fn store(
        &self,
        entity: &str,
        writes: Vec<(String, Option<String>)>,
        archive: Vec<crate::model::state::ArchiveEntry>,
        replace: Vec<crate::model::state::ArchiveEntry>,
        then: Box<dyn FnOnce(bool) + Send>,
    ) {
        let Some(ctx) = self.ctx.upgrade() else {
            return then(false);
        };
        let cmd = Command::HostedWrite {
            entity: entity.to_string(),
            node: self.node,
            writes,
            archive,
            quota_bytes: ctx.config.mam.quota_bytes,
            replace,
        };
        let entity = entity.to_string();
        // Queued in call order: one entity's writes commit in order.
        let commit = ctx.replicator.commit_in_order(&cmd);
        ctx.replicator.runtime().spawn(async move {
            match commit.await {
                Ok(_) => then(true),
                Err(e) => {
                    tracing::warn!(%entity, error = %e, "hosted records not written: no commit");
                    then(false)
                }
            }
        });
    }

    fn hand_over(&self, entity: &str, to: u64, then: Box<dyn FnOnce(bool) + Send>) {
        let Some(ctx) = self.ctx.upgrade() else {
            return then(false);
        };
        let cmd = Command::HostedMove {
            entity: entity.to_string(),
            from: self.node,
            to,
        };
        let rt = ctx.replicator.runtime().clone();
        rt.spawn(async move {
            match ctx.replicator.commit_async(&cmd).await {
                Ok(_) => then(true),
                Err(e) => {
                    tracing::warn!(error = %e, "hosted entity not handed over: no commit");
                    then(false)
                }
            }
        });
    }

    fn archive_query(&self, owner: &str, iq: &Element) -> Vec<Element> {
        match self.ctx.upgrade() {
            Some(ctx) => crate::im::modules::mam::query_for(&ctx, owner, iq),
            None => Vec::new(),
        }
    }

    fn session_gone(&self, full: &str) -> bool {
        let Some(ctx) = self.ctx.upgrade() else {
            return false;
        };
        let ours = jid::Jid::new(full)
            .is_ok_and(|j| j.domain().as_str().eq_ignore_ascii_case(&ctx.config.domain));
        ours && ctx.state.session(full).is_none()
    }

    fn state(&self) -> Option<Arc<crate::model::state::State>> {
        Some(self.ctx.upgrade()?.state.clone())
    }

    fn domain(&self) -> String {
        self.ctx
            .upgrade()
            .map(|c| c.config.domain.clone())
            .unwrap_or_default()
    }

    fn caught_up(&self, then: Box<dyn FnOnce(bool) + Send>) {
        match self.ctx.upgrade() {
            Some(ctx) => ctx.replicator.caught_up_then(then),
            None => then(false),
        }
    }

    fn commit(
        &self,
        cmd: Command,
        then: Box<dyn FnOnce(Result<crate::model::state::Applied, String>) + Send>,
    ) {
        match self.ctx.upgrade() {
            Some(ctx) => ctx.replicator.commit_then(cmd, then),
            None => then(Err("the node is stopping".into())),
        }
    }

    fn arbiter(&self) -> Option<actix_rt::ArbiterHandle> {
        let ctx = self.ctx.upgrade()?;
        let arbiters = ctx.arbiters.get()?;
        if arbiters.is_empty() {
            return None;
        }
        let i = rand::random::<usize>() % arbiters.len();
        Some(arbiters[i].clone())
    }
}
