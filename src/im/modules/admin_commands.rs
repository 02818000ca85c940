//! Server administration from a client: ad-hoc commands (XEP-0050) with
//! the service-administration subset of XEP-0133 — add a user (§4.1),
//! delete users (§4.2), change a user's password (§4.7), list the online
//! users (§4.21), announce to all online users (§4.23). Only the accounts
//! in `admins` may list or run them; each is one form, filled in and
//! submitted (a client that submits the form with its first request skips
//! the blank one).

use jid::{BareJid, Jid};

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;
use crate::model::sasl::credentials::Credentials;
use crate::model::state::Command;

pub const NS: &str = "http://jabber.org/protocol/commands";
const DATA: &str = "jabber:x:data";
const ADMIN: &str = "http://jabber.org/protocol/admin";

/// The commands: node, name.
pub const COMMANDS: [(&str, &str); 5] = [
    ("http://jabber.org/protocol/admin#add-user", "Add a user"),
    (
        "http://jabber.org/protocol/admin#delete-user",
        "Delete users",
    ),
    (
        "http://jabber.org/protocol/admin#change-user-password",
        "Change a user's password",
    ),
    (
        "http://jabber.org/protocol/admin#get-online-users-list",
        "List the online users",
    ),
    (
        "http://jabber.org/protocol/admin#announce",
        "Announce to all online users",
    ),
];

pub struct AdminCommands;

/// Whether `who` is one of the configured administrators.
pub fn is_admin(ctx: &ImCtx, who: &BareJid) -> bool {
    ctx.config
        .admins
        .iter()
        .any(|a| BareJid::new(a).is_ok_and(|a| &a == who))
}

/// disco#items of the commands node (XEP-0050 §2.2): the commands this
/// requester may run.
pub fn items(ctx: &ImCtx, who: &BareJid) -> Element {
    let mut q = Element::new("query", ns::DISCO_ITEMS).with_attr("node", NS);
    if is_admin(ctx, who) {
        for (node, name) in COMMANDS {
            q.push_child(
                Element::new("item", ns::DISCO_ITEMS)
                    .with_attr("jid", ctx.config.domain.clone())
                    .with_attr("node", node)
                    .with_attr("name", name),
            );
        }
    }
    q
}

/// disco#info of one command's node (§6.2), if it is one.
pub fn info(node: &str) -> Option<Element> {
    let (_, name) = COMMANDS.iter().find(|(n, _)| *n == node)?;
    Some(
        Element::new("query", ns::DISCO_INFO)
            .with_attr("node", node)
            .with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "automation")
                    .with_attr("type", "command-node")
                    .with_attr("name", *name),
            )
            .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", NS))
            .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", DATA)),
    )
}

fn field(var: &str, kind: &str, label: &str, required: bool) -> Element {
    let mut f = Element::new("field", DATA)
        .with_attr("var", var)
        .with_attr("type", kind)
        .with_attr("label", label);
    if required {
        f.push_child(Element::new("required", DATA));
    }
    f
}

/// The blank form of a command.
fn form(node: &str) -> Element {
    let mut x = Element::new("x", DATA)
        .with_attr("type", "form")
        .with_child(
            Element::new("field", DATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", DATA).with_text(ADMIN)),
        );
    let fields: Vec<Element> = match node.rsplit_once('#').map(|(_, c)| c) {
        Some("add-user") => vec![
            field(
                "accountjid",
                "jid-single",
                "The Jabber ID for the account to be added",
                true,
            ),
            field(
                "password",
                "text-private",
                "The password for this account",
                true,
            ),
            field("password-verify", "text-private", "Retype password", true),
        ],
        Some("delete-user") => vec![field(
            "accountjids",
            "jid-multi",
            "The Jabber ID(s) to delete",
            true,
        )],
        Some("change-user-password") => vec![
            field(
                "accountjid",
                "jid-single",
                "The Jabber ID for this account",
                true,
            ),
            field("password", "text-private", "The new password", true),
        ],
        Some("get-online-users-list") => vec![field(
            "max_items",
            "text-single",
            "Maximum number of users",
            false,
        )],
        Some("announce") => vec![
            field("subject", "text-single", "Subject", false),
            field("announcement", "text-multi", "Announcement", true),
        ],
        _ => Vec::new(),
    };
    for f in fields {
        x.push_child(f);
    }
    x
}

/// The values of a submitted form's fields.
fn values(x: &Element, var: &str) -> Vec<String> {
    x.elements()
        .filter(|f| f.name == "field" && f.attr("var") == Some(var))
        .flat_map(|f| f.elements().filter(|v| v.name == "value").map(|v| v.text()))
        .collect()
}

fn value(x: &Element, var: &str) -> Option<String> {
    values(x, var).into_iter().next().filter(|v| !v.is_empty())
}

fn bad(text: impl Into<String>) -> StanzaError {
    StanzaError::with_text(StanzaCondition::BadRequest, text)
        .with_app(Element::new("bad-payload", NS))
}

fn command(node: &str, session: &str, status: &str) -> Element {
    Element::new("command", NS)
        .with_attr("node", node)
        .with_attr("sessionid", session)
        .with_attr("status", status)
}

fn note(node: &str, session: &str, text: String) -> Element {
    command(node, session, "completed").with_child(
        Element::new("note", NS)
            .with_attr("type", "info")
            .with_text(text),
    )
}

/// A local account's username from a JID field.
fn local_user(ctx: &ImCtx, jid: &str) -> Result<String, StanzaError> {
    let j = BareJid::new(jid.trim()).map_err(|_| bad(format!("{jid} is not a JID")))?;
    if j.domain().as_str() != ctx.config.domain {
        return Err(bad(format!("{j} is not an account of this server")));
    }
    let user = j.node().map(|n| n.as_str().to_string()).unwrap_or_default();
    crate::model::sasl::normalize_username(&user, &ctx.config.domain)
        .ok_or_else(|| bad(format!("{jid} is not a valid account name")))
}

impl Module for AdminCommands {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec![NS]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![(IqKind::Set, Addressee::Host, NS)]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        let ctx = req.server;
        let cmd = req.payload;
        let node = cmd.attr("node").unwrap_or_default().to_string();
        if !COMMANDS.iter().any(|(n, _)| *n == node) {
            return Err(StanzaError::new(StanzaCondition::ItemNotFound)).into();
        }
        if !is_admin(ctx, &req.from.to_bare()) {
            return Err(StanzaError::new(StanzaCondition::Forbidden)).into();
        }
        let session = cmd
            .attr("sessionid")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let action = cmd.attr("action").unwrap_or("execute");
        if action == "cancel" {
            return Ok(Some(command(&node, &session, "canceled"))).into();
        }
        let submitted = cmd
            .get_child("x", DATA)
            .filter(|x| x.attr("type") == Some("submit"));
        let Some(x) = submitted else {
            if !matches!(action, "execute" | "next") {
                return Err(bad(format!("action {action} on a blank form"))).into();
            }
            // §3.4: the form to fill in.
            return Ok(Some(
                command(&node, &session, "executing")
                    .with_child(
                        Element::new("actions", NS)
                            .with_attr("execute", "complete")
                            .with_child(Element::new("complete", NS)),
                    )
                    .with_child(form(&node)),
            ))
            .into();
        };
        tracing::info!(admin = %req.from, command = %node, "administration command");
        match node.rsplit_once('#').map(|(_, c)| c).unwrap_or_default() {
            "add-user" => {
                let (Some(jid), Some(pw)) = (value(x, "accountjid"), value(x, "password")) else {
                    return Err(bad("accountjid and password are required")).into();
                };
                if value(x, "password-verify").is_some_and(|v| v != pw) {
                    return Err(bad("the passwords differ")).into();
                }
                let user = match local_user(ctx, &jid) {
                    Ok(u) => u,
                    Err(e) => return Err(e).into(),
                };
                let credentials = match Credentials::new(&pw) {
                    Ok(c) => c,
                    Err(e) => return Err(bad(e.to_string())).into(),
                };
                let c = Command::CreateAccount {
                    username: user,
                    credentials,
                };
                write(ctx, c, node, session, format!("{jid} added"))
            }
            "change-user-password" => {
                let (Some(jid), Some(pw)) = (value(x, "accountjid"), value(x, "password")) else {
                    return Err(bad("accountjid and password are required")).into();
                };
                let user = match local_user(ctx, &jid) {
                    Ok(u) => u,
                    Err(e) => return Err(e).into(),
                };
                if !ctx.state.account_exists(&user) {
                    return Err(StanzaError::with_text(
                        StanzaCondition::ItemNotFound,
                        format!("no account {jid}"),
                    ))
                    .into();
                }
                let credentials = match Credentials::new(&pw) {
                    Ok(c) => c,
                    Err(e) => return Err(bad(e.to_string())).into(),
                };
                let c = Command::SetPassword {
                    username: user,
                    credentials,
                };
                write(ctx, c, node, session, format!("password of {jid} changed"))
            }
            "delete-user" => {
                let jids = values(x, "accountjids");
                if jids.is_empty() {
                    return Err(bad("accountjids is required")).into();
                }
                let mut users = Vec::new();
                for j in &jids {
                    match local_user(ctx, j) {
                        Ok(u) if ctx.state.account_exists(&u) => users.push(u),
                        Ok(_) => {
                            return Err(StanzaError::with_text(
                                StanzaCondition::ItemNotFound,
                                format!("no account {j}"),
                            ))
                            .into()
                        }
                        Err(e) => return Err(e).into(),
                    }
                }
                let Some(c) = ctx.arc() else {
                    return Err(StanzaError::new(StanzaCondition::InternalServerError)).into();
                };
                IqResponse::later(async move {
                    for username in users {
                        let cmd = Command::DeleteAccount { username };
                        if let Err(e) = c.replicator.commit_async(&cmd).await {
                            return Err(StanzaError::with_text(
                                StanzaCondition::InternalServerError,
                                e.to_string(),
                            ))
                            .into();
                        }
                    }
                    Ok(Some(note(
                        &node,
                        &session,
                        format!("deleted: {}", jids.join(", ")),
                    )))
                    .into()
                })
            }
            "get-online-users-list" => {
                let max = value(x, "max_items")
                    .and_then(|m| m.parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                let mut users: Vec<String> = ctx
                    .state
                    .all_sessions()
                    .into_iter()
                    .filter_map(|r| Jid::new(&r.jid).ok().map(|j| j.to_bare().to_string()))
                    .collect();
                users.sort();
                users.dedup();
                users.truncate(max);
                let mut f = Element::new("field", DATA)
                    .with_attr("var", "onlineuserjids")
                    .with_attr("type", "jid-multi")
                    .with_attr("label", "The list of all online users");
                for u in users {
                    f.push_child(Element::new("value", DATA).with_text(u));
                }
                let result = Element::new("x", DATA)
                    .with_attr("type", "result")
                    .with_child(
                        Element::new("field", DATA)
                            .with_attr("var", "FORM_TYPE")
                            .with_attr("type", "hidden")
                            .with_child(Element::new("value", DATA).with_text(ADMIN)),
                    )
                    .with_child(f);
                Ok(Some(
                    command(&node, &session, "completed").with_child(result),
                ))
                .into()
            }
            "announce" => {
                let Some(text) =
                    Some(values(x, "announcement").join("\n")).filter(|t| !t.trim().is_empty())
                else {
                    return Err(bad("announcement is required")).into();
                };
                let mut sent = 0;
                // Every online session (XEP-0133 §4.23), not only those
                // whose initial presence is committed yet: a user who just
                // logged in is online too.
                for r in ctx.state.all_sessions() {
                    let Ok(full) = jid::FullJid::new(&r.jid) else {
                        continue;
                    };
                    let mut msg = Element::new("message", ns::CLIENT)
                        .with_attr("from", ctx.config.domain.clone())
                        .with_attr("to", r.jid.clone())
                        .with_attr("type", "headline")
                        .with_attr("id", format!("announce-{session}"));
                    if let Some(s) = value(x, "subject") {
                        msg.push_child(Element::new("subject", ns::CLIENT).with_text(s));
                    }
                    msg.push_child(Element::new("body", ns::CLIENT).with_text(text.clone()));
                    if let Some(t) = crate::routing::route::full(ctx, &full) {
                        crate::routing::route::send(ctx, &t, msg, None);
                        sent += 1;
                    }
                }
                Ok(Some(note(
                    &node,
                    &session,
                    format!("announced to {sent} sessions"),
                )))
                .into()
            }
            _ => Err(StanzaError::new(StanzaCondition::ItemNotFound)).into(),
        }
    }
}

/// Commit `cmd`, then complete the command with `done`.
fn write(ctx: &ImCtx, cmd: Command, node: String, session: String, done: String) -> IqResponse {
    super::commit_then(ctx, cmd, "an administration command", move |_, _| {
        Ok(Some(note(&node, &session, done))).into()
    })
}
