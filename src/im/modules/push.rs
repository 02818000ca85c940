//! Push notifications (XEP-0357): a device registers an app server (a JID
//! and a node) with `<enable/>` (§5), and while it cannot receive messages —
//! its stream-management session is detached (XEP-0198), or the account is
//! offline and messages go to offline storage — the server publishes a
//! notification to that node (§7) with the summary form
//! (`urn:xmpp:push:summary`: message count, last sender, the body only
//! where allowed) and the device's publish options.
//!
//! Registrations are replicated (`state/push.rs`): any node notifies,
//! including for a user whose node has since died (its messages go offline
//! on the node that routes them). Each device gets at most one notification
//! per `[push] min_interval_ms` from a node; what arrives within it is told
//! at its end, counted. An app server answering `<item-not-found/>` (the
//! device is gone, §8) ends that registration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::model::state::push::PushRegistration;
use crate::model::state::{Command, StateError};

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};

pub const NS: &str = "urn:xmpp:push:0";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const DATA: &str = "jabber:x:data";
const SUMMARY: &str = "urn:xmpp:push:summary";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";
/// Longest body a notification carries.
const MAX_BODY_CHARS: usize = 256;
/// Notifications waiting for the app server's answer, at most.
const MAX_PENDING: usize = 10_000;
/// How long an app server's answer is waited for.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

/// One device, as the rate limit and the answers know it.
type Device = (String, String, String); // (user, app server JID, node)

#[derive(Default)]
struct DeviceState {
    last_sent: Option<Instant>,
    /// Messages told of by the notification queued for the end of the
    /// interval (none queued: 0).
    deferred: Option<Summary>,
}

/// What a notification says.
#[derive(Clone, Debug)]
pub struct Summary {
    pub count: u64,
    pub sender: String,
    pub body: Option<String>,
}

#[derive(Default)]
pub struct Push {
    devices: Mutex<HashMap<Device, DeviceState>>,
    /// Notification iq id → the device it was for, and when it was sent.
    pending: Mutex<HashMap<String, (Device, Instant)>>,
}

impl Module for Push {
    fn account_features(&self, server: &ImCtx) -> Vec<&'static str> {
        if server.config.push.enabled {
            vec![NS]
        } else {
            Vec::new()
        }
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![(IqKind::Set, Addressee::Account, NS)]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        let ctx = req.server;
        if !ctx.config.push.enabled {
            return Err(StanzaError::new(StanzaCondition::ServiceUnavailable)).into();
        }
        let user = req.user();
        let p = req.payload;
        let Some(jid) = p.attr("jid").and_then(|j| jid::Jid::new(j).ok()) else {
            return Err(StanzaError::with_text(
                StanzaCondition::BadRequest,
                "'jid' must be the app server's JID",
            ))
            .into();
        };
        let jid = jid.to_string();
        let node = p.attr("node").filter(|n| !n.is_empty() && n.len() <= 1024);
        let cmd = match p.name.as_str() {
            // §5: enable.
            "enable" => {
                let Some(node) = node else {
                    return Err(StanzaError::with_text(
                        StanzaCondition::BadRequest,
                        "'node' is required (at most 1024 bytes)",
                    ))
                    .into();
                };
                let options = match publish_options(p) {
                    Ok(o) => o,
                    Err(e) => return Err(e).into(),
                };
                Command::PushEnable {
                    username: user.clone(),
                    registration: PushRegistration {
                        jid,
                        node: node.to_string(),
                        options,
                    },
                    max: ctx.config.push.max_registrations,
                }
            }
            // §6: disable, one node or all of the app server's.
            "disable" => Command::PushDisable {
                username: user.clone(),
                jid,
                node: node.map(str::to_string),
            },
            _ => return Err(StanzaError::new(StanzaCondition::FeatureNotImplemented)).into(),
        };
        let Some(c) = ctx.arc() else {
            return Err(StanzaError::new(StanzaCondition::InternalServerError)).into();
        };
        IqResponse::later(async move {
            match c.replicator.commit_async(&cmd).await {
                Ok(_) => {
                    tracing::info!(%user, op = ?cmd_name(&cmd), "push registration changed");
                    if let Command::PushDisable { jid, node, .. } = &cmd {
                        c.modules.push.forget(&user, jid, node.as_deref());
                    }
                    Ok(None).into()
                }
                Err(StateError::QuotaExceeded(m)) => Err(StanzaError::with_text(
                    StanzaCondition::ResourceConstraint,
                    m,
                ))
                .into(),
                Err(e) => {
                    tracing::warn!(error = %e, "push registration not committed");
                    Err(StanzaError::new(StanzaCondition::InternalServerError)).into()
                }
            }
        })
    }
}

fn cmd_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::PushEnable { .. } => "enable",
        _ => "disable",
    }
}

/// The enable's publish options (§5), FORM_TYPE left out; a form of another
/// type, or one too big, is a bad request.
fn publish_options(enable: &Element) -> Result<Vec<(String, Vec<String>)>, StanzaError> {
    let Some(form) = enable.get_child("x", DATA) else {
        return Ok(Vec::new());
    };
    let bad = |m: &str| StanzaError::with_text(StanzaCondition::BadRequest, m.to_string());
    let mut out = Vec::new();
    let mut size = 0;
    for f in form.elements().filter(|f| f.name == "field") {
        let var = f.attr("var").unwrap_or_default().to_string();
        let values: Vec<String> = f
            .elements()
            .filter(|v| v.name == "value")
            .map(|v| v.text())
            .collect();
        if var == "FORM_TYPE" {
            if values.first().map(String::as_str) != Some(PUBLISH_OPTIONS) {
                return Err(bad("the form must be publish-options"));
            }
            continue;
        }
        size += var.len() + values.iter().map(String::len).sum::<usize>();
        if var.is_empty() || size > 4096 || out.len() >= 32 {
            return Err(bad("publish options: a field without var, or too many"));
        }
        out.push((var, values));
    }
    Ok(out)
}

/// Whether a message is worth waking a device for: one with a body, or
/// encrypted (XEP-0384 and the like); not errors or headlines.
pub fn wakes(msg: &Element) -> bool {
    !matches!(msg.attr("type"), Some("error") | Some("headline"))
        && (msg.get_child("body", ns::CLIENT).is_some()
            || msg.elements().any(|c| c.name == "encrypted"))
}

impl Push {
    /// A message for `user` that no device of theirs can take now (the
    /// session it went to is detached, or it went to offline storage);
    /// `count`: how many such messages wait.
    pub fn missed(&self, ctx: &ImCtx, user: &str, msg: &Element, count: u64) {
        if !ctx.config.push.enabled || !wakes(msg) {
            return;
        }
        let regs = ctx.state.push_registrations(user).unwrap_or_default();
        if regs.is_empty() {
            return;
        }
        let sender = msg.attr("from").unwrap_or_default().to_string();
        let body = msg
            .get_child("body", ns::CLIENT)
            .map(|b| b.text().chars().take(MAX_BODY_CHARS).collect::<String>());
        let interval = Duration::from_millis(ctx.config.push.min_interval_ms);
        for reg in regs {
            let summary = Summary {
                count: count.max(1),
                sender: sender.clone(),
                body: body.clone().filter(|_| body_allowed(ctx, &reg)),
            };
            let device = (user.to_string(), reg.jid.clone(), reg.node.clone());
            let now = Instant::now();
            let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            let st = devices.entry(device.clone()).or_default();
            match st.last_sent {
                Some(t) if now.duration_since(t) < interval => {
                    // Within the interval: told at its end, counted.
                    let queued = st.deferred.is_some();
                    st.deferred = Some(summary);
                    if !queued {
                        let wait = interval - now.duration_since(t);
                        self.send_later(ctx, device, reg, wait);
                    }
                }
                _ => {
                    st.last_sent = Some(now);
                    drop(devices);
                    self.send(ctx, &device, &reg, &summary);
                }
            }
        }
    }

    fn send_later(&self, ctx: &ImCtx, device: Device, reg: PushRegistration, wait: Duration) {
        let Some(c) = ctx.arc() else { return };
        ctx.replicator.runtime().spawn(async move {
            tokio::time::sleep(wait).await;
            let push = c.modules.push.clone();
            let summary = {
                let mut devices = push.devices.lock().unwrap_or_else(|e| e.into_inner());
                let Some(st) = devices.get_mut(&device) else {
                    return;
                };
                st.last_sent = Some(Instant::now());
                st.deferred.take()
            };
            // Still registered? (It may have been disabled meanwhile.)
            let still = c
                .state
                .push_registrations(&device.0)
                .unwrap_or_default()
                .into_iter()
                .find(|r| r.jid == reg.jid && r.node == reg.node);
            if let (Some(summary), Some(reg)) = (summary, still) {
                push.send(&c, &device, &reg, &summary);
            }
        });
    }

    /// Forget the rate-limit state of devices no longer registered.
    fn forget(&self, user: &str, jid: &str, node: Option<&str>) {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(u, j, n), _| !(u == user && j == jid && node.is_none_or(|x| x == n)));
    }

    /// Publish one notification (§7) to the device's node.
    fn send(&self, ctx: &ImCtx, device: &Device, reg: &PushRegistration, s: &Summary) {
        // The id names the device's node (hashed): an answer that reaches
        // another node than this one is still understood there.
        let id = format!(
            "push-{:016x}-{}",
            rand::random::<u64>(),
            node_tag(&reg.node)
        );
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            pending.retain(|_, (_, at)| now.duration_since(*at) < ANSWER_WAIT);
            if pending.len() >= MAX_PENDING {
                tracing::warn!(user = %device.0, app = %reg.jid, "push notification dropped: too many unanswered");
                return;
            }
            pending.insert(id.clone(), (device.clone(), now));
        }
        let iq = notification(&ctx.config.account_jid(&device.0), &id, reg, s);
        tracing::info!(user = %device.0, app = %reg.jid, node = %reg.node, count = s.count, "push notification sent");
        crate::base::metrics::get().push_sent.inc();
        ctx.elsewhere.send(ctx, iq);
    }

    /// An iq result or error addressed to an account: true if it answers a
    /// notification (and was handled here). `<item-not-found/>` ends the
    /// registration (§8); other errors are logged.
    pub fn answered(&self, ctx: &ImCtx, iq: &Element) -> bool {
        let Some(id) = iq.attr("id").filter(|i| i.starts_with("push-")) else {
            return false;
        };
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .map(|(d, _)| d);
        // Sent from another node: the registration is found from the
        // answer itself (its addressee, its sender, the node's tag).
        let Some(device) = pending.or_else(|| device_of_answer(ctx, iq, id)) else {
            return false;
        };
        // Only the app server asked may answer.
        let from_app = iq
            .attr("from")
            .and_then(|f| jid::Jid::new(f).ok())
            .is_some_and(|f| f.to_string() == device.1);
        if !from_app {
            tracing::info!(
                id,
                "push answer from another JID than the app server's; ignored"
            );
            return true;
        }
        if iq.attr("type") != Some("error") {
            return true;
        }
        let condition = crate::base::stanza_error::condition_of(iq).unwrap_or_default();
        if condition != "item-not-found" {
            tracing::info!(user = %device.0, app = %device.1, %condition, "push notification refused by the app server");
            return true;
        }
        tracing::info!(user = %device.0, app = %device.1, node = %device.2, "app server forgot the device: push registration removed");
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&device);
        ctx.replicator.submit(&Command::PushDisable {
            username: device.0,
            jid: device.1,
            node: Some(device.2),
        });
        true
    }
}

/// A short stable tag of a device's node, for notification ids.
fn node_tag(node: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(node.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The device an answer to notification `id` is about, when the
/// notification went out from another node: the account it is addressed
/// to, a registration with the answering app server whose node has the
/// id's tag.
fn device_of_answer(ctx: &ImCtx, iq: &Element, id: &str) -> Option<Device> {
    let tag = id.rsplit('-').next()?;
    let to = jid::Jid::new(iq.attr("to")?).ok()?;
    let user = ctx.config.account_of(&to)?;
    let from = jid::Jid::new(iq.attr("from")?).ok()?.to_string();
    ctx.state
        .push_registrations(&user)
        .ok()?
        .into_iter()
        .find(|r| r.jid == from && node_tag(&r.node) == tag)
        .map(|r| (user, r.jid, r.node))
}

fn body_allowed(ctx: &ImCtx, reg: &PushRegistration) -> bool {
    let refused = reg.options.iter().any(|(var, v)| {
        var == "include-body" && v.first().is_some_and(|v| v == "false" || v == "0")
    });
    ctx.config.push.include_body && !refused
}

/// The notification iq (§7, Example 9).
fn notification(from: &str, id: &str, reg: &PushRegistration, s: &Summary) -> Element {
    let field = |var: &str, value: &str| {
        Element::new("field", DATA)
            .with_attr("var", var)
            .with_child(Element::new("value", DATA).with_text(value))
    };
    let mut form = Element::new("x", DATA)
        .with_attr("type", "submit")
        .with_child(field("FORM_TYPE", SUMMARY))
        .with_child(field("message-count", &s.count.to_string()))
        .with_child(field("last-message-sender", &s.sender));
    if let Some(body) = &s.body {
        form.push_child(field("last-message-body", body));
    }
    let mut publish = Element::new("pubsub", PUBSUB).with_child(
        Element::new("publish", PUBSUB)
            .with_attr("node", reg.node.clone())
            .with_child(
                Element::new("item", PUBSUB)
                    .with_child(Element::new("notification", NS).with_child(form)),
            ),
    );
    if !reg.options.is_empty() {
        let mut opts = Element::new("x", DATA)
            .with_attr("type", "submit")
            .with_child(field("FORM_TYPE", PUBLISH_OPTIONS));
        for (var, values) in &reg.options {
            let mut f = Element::new("field", DATA).with_attr("var", var.clone());
            for v in values {
                f.push_child(Element::new("value", DATA).with_text(v.clone()));
            }
            opts.push_child(f);
        }
        publish.push_child(Element::new("publish-options", PUBSUB).with_child(opts));
    }
    Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", id)
        .with_attr("from", from)
        .with_attr("to", reg.jid.clone())
        .with_child(publish)
}

/// Shared by the module list and the callers that report missed messages.
pub fn new() -> Arc<Push> {
    Arc::new(Push::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_carries_the_summary_and_the_options() {
        let reg = PushRegistration {
            jid: "push.example".into(),
            node: "dev1".into(),
            options: vec![("secret".into(), vec!["s3".into()])],
        };
        let s = Summary {
            count: 3,
            sender: "a@b/c".into(),
            body: None,
        };
        let iq = notification("u@localhost", "push-1", &reg, &s);
        let xml = iq.to_xml(ns::CLIENT);
        assert!(xml.contains("urn:xmpp:push:summary"), "{xml}");
        assert!(
            xml.contains("<value>3</value>") && xml.contains("a@b/c"),
            "{xml}"
        );
        assert!(!xml.contains("last-message-body"), "{xml}");
        assert!(
            xml.contains("publish-options") && xml.contains("s3"),
            "{xml}"
        );
        assert_eq!(iq.attr("to"), Some("push.example"));
    }

    #[test]
    fn publish_options_must_be_that_form() {
        let form = |t: &str| {
            Element::new("enable", NS).with_child(
                Element::new("x", DATA).with_child(
                    Element::new("field", DATA)
                        .with_attr("var", "FORM_TYPE")
                        .with_child(Element::new("value", DATA).with_text(t)),
                ),
            )
        };
        assert!(publish_options(&form(PUBLISH_OPTIONS)).is_ok());
        assert!(publish_options(&form("urn:other")).is_err());
        let plain = Element::new("message", ns::CLIENT);
        assert!(!wakes(&plain));
        assert!(wakes(
            &plain.with_child(Element::new("body", ns::CLIENT).with_text("x"))
        ));
    }
}
