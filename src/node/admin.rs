//! Account administration: the operations behind `starling user ...`, run
//! directly on a data dir when no node holds it, or through the running
//! node's admin socket (data_dir/admin.sock, owner-only, plus a token file
//! that only the node's user can read).

use std::path::Path;
use std::sync::Arc;

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::model::sasl::{normalize_username, Credentials};
use crate::model::state::{Command, State};
use crate::node::server::ServerCtx;
use crate::transport::stream::{StreamCondition, StreamError};

pub const SOCKET: &str = "admin.sock";
pub const TOKEN: &str = "admin.token";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum AdminOp {
    Add {
        user: String,
        password: String,
    },
    Passwd {
        user: String,
        password: String,
    },
    Del {
        user: String,
    },
    /// Empty the user's message archive.
    #[serde(rename = "purge-archive")]
    PurgeArchive {
        user: String,
    },
    List,
    /// Drain the node and stop it (`starling cluster drain`).
    Drain,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    token: String,
    #[serde(flatten)]
    op: AdminOp,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub users: Vec<String>,
}

/// Carry out `op`: reads from `state`, writes through `commit` (the
/// cluster on a running node, the local state machine offline).
pub fn execute(
    state: &State,
    domain: &str,
    op: &AdminOp,
    commit: impl Fn(&Command) -> Result<crate::model::state::Applied, crate::model::state::StateError>,
) -> Result<Vec<String>, String> {
    let user = |u: &str| {
        normalize_username(u, domain).ok_or_else(|| format!("{u:?} is not a valid username"))
    };
    let creds = |p: &str| Credentials::new(p).map_err(|e| e.to_string());
    let cmd = match op {
        AdminOp::List => return state.list_accounts().map_err(|e| e.to_string()),
        AdminOp::Drain => return Err("no node is running on this data dir".into()),
        AdminOp::Add { user: u, password } => Command::CreateAccount {
            username: user(u)?,
            credentials: creds(password)?,
        },
        AdminOp::Passwd { user: u, password } => Command::SetPassword {
            username: user(u)?,
            credentials: creds(password)?,
        },
        AdminOp::Del { user: u } => Command::DeleteAccount { username: user(u)? },
        AdminOp::PurgeArchive { user: u } => {
            let username = user(u)?;
            if !state.account_exists(&username) {
                return Err(format!("no account {username}"));
            }
            Command::ArchivePurge { username }
        }
    };
    commit(&cmd).map_err(|e| e.to_string())?;
    Ok(Vec::new())
}

/// Bind the admin socket and write a fresh token.
pub fn bind(data_dir: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(SOCKET);
    // We hold the data dir's lock, so a socket file here is stale (and an
    // admin API address, until this node writes its own).
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(data_dir.join(crate::node::admin_client::URL_FILE));
    let token: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    crate::base::tls::write_private(&data_dir.join(TOKEN), token.as_bytes())?;
    let l = std::os::unix::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

pub fn remove(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(SOCKET));
    let _ = std::fs::remove_file(data_dir.join(crate::node::admin_client::URL_FILE));
    let _ = std::fs::remove_file(data_dir.join(TOKEN));
}

pub async fn serve(ctx: Arc<ServerCtx>, listener: std::os::unix::net::UnixListener) {
    let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
        return;
    };
    let Ok(token) = std::fs::read_to_string(ctx.config.data_dir.join(TOKEN)) else {
        return;
    };
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        let token = token.clone();
        actix_rt::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(r).take(64 * 1024);
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Err(e) => Response {
                    ok: false,
                    error: Some(format!("bad request: {e}")),
                    users: vec![],
                },
                // Compared in constant time: timing tells nothing of the token.
                Ok(req)
                    if !bool::from(subtle::ConstantTimeEq::ct_eq(
                        req.token.as_bytes(),
                        token.as_bytes(),
                    )) =>
                {
                    Response {
                        ok: false,
                        error: Some("bad admin token".into()),
                        users: vec![],
                    }
                }
                Ok(req) => {
                    if matches!(req.op, AdminOp::Drain) {
                        ctx.drain_requested.notify_one();
                        let mut out = serde_json::to_string(&Response {
                            ok: true,
                            error: None,
                            users: vec![],
                        })
                        .unwrap_or_default();
                        out.push('\n');
                        let _ = w.write_all(out.as_bytes()).await;
                        return;
                    }
                    // The commit blocks for one replication round: off the arbiter.
                    let c = ctx.clone();
                    let op = req.op.clone();
                    let result = tokio::task::spawn_blocking(move || {
                        execute(&c.state, &c.config.domain, &op, |cmd| c.commit(cmd))
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    if let (Ok(_), AdminOp::Del { user }) = (&result, &req.op) {
                        kick(&ctx, user);
                    }
                    match result {
                        Ok(users) => Response {
                            ok: true,
                            error: None,
                            users,
                        },
                        Err(e) => Response {
                            ok: false,
                            error: Some(e),
                            users: vec![],
                        },
                    }
                }
            };
            let mut out = serde_json::to_string(&resp).unwrap_or_default();
            out.push('\n');
            let _ = w.write_all(out.as_bytes()).await;
        });
    }
}

/// End the sessions of a deleted account.
fn kick(ctx: &ServerCtx, user: &str) {
    let Some(user) = normalize_username(user, &ctx.config.domain) else {
        return;
    };
    let Ok(bare) = jid::BareJid::new(&format!("{user}@{}", ctx.config.domain)) else {
        return;
    };
    for entry in ctx.router.resources(&bare) {
        entry.handle.close(StreamError::with_text(
            StreamCondition::NotAuthorized,
            "account removed",
        ));
    }
}

/// Send `op` to a running node. `Ok(None)` when no node is listening.
pub fn request(data_dir: &Path, op: &AdminOp) -> Result<Option<Response>, String> {
    use std::io::{BufRead, Write};
    let Ok(mut conn) = std::os::unix::net::UnixStream::connect(data_dir.join(SOCKET)) else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(data_dir.join(TOKEN))
        .map_err(|e| format!("cannot read the admin token: {e}"))?;
    let mut line = serde_json::to_string(&Request {
        token,
        op: op.clone(),
    })
    .map_err(|e| e.to_string())?;
    line.push('\n');
    conn.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    std::io::BufReader::new(conn)
        .read_line(&mut resp)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&resp)
        .map(Some)
        .map_err(|e| format!("bad answer from the node: {e}"))
}
