//! The `starling` command: run a node, manage accounts.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use starling::model::config::Config;
use starling::model::state::State;
use starling::node::admin::{self, AdminOp};
use starling::node::admin_client::{self, Target};

/// The server's allocator. Its threads make many small, short-lived
/// allocations (parsed stanzas, serialized commands, sled pages), on which
/// glibc's malloc spent a fifth of the XMPP threads' samples; with mimalloc
/// one node with the archive on carries 30,000 msg/s at p99 about 5 ms,
/// where glibc's build fell behind from 25,000
/// (benches/results/allocator-2026-12-06.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` (the same in mimalloc 2 and 3's
/// `mi_option_e`): 0 commits arena memory as it is used, so that memory
/// given back is decommitted and leaves the resident set. With the default
/// (eager on Linux) an idle session cost 2-3% more and the process kept
/// ~50 MiB more after its sessions left.
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: std::os::raw::c_int = 4;

/// Runs before `main` and before Rust's first allocation, which reserves
/// mimalloc's first arena with whatever the option is then.
#[cfg(target_os = "linux")]
extern "C" fn allocator_options() {
    // SAFETY: sets a value in mimalloc's static option table; no other
    // thread exists yet and nothing has been allocated.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static ALLOCATOR_OPTIONS: extern "C" fn() = allocator_options;

#[derive(Parser)]
#[command(name = "starling", version, about = "A clustered XMPP server")]
struct Cli {
    /// TOML config file (STARLING_* environment variables override it).
    #[arg(long, short, global = true, env = "STARLING_CONFIG")]
    config: Option<PathBuf>,
    /// The admin API of the node to ask (`http://HOST:PORT`, the node's HTTP
    /// listener); default: the node running on this config's data dir.
    #[arg(long, global = true, env = "STARLING_ADMIN_URL")]
    url: Option<String>,
    /// The admin API's bearer token; default: the one in the data dir.
    #[arg(
        long,
        global = true,
        env = "STARLING_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node.
    Serve {
        /// Join the cluster through this member's mesh address (first start).
        #[arg(long)]
        join: Option<String>,
    },
    /// Inspect the cluster.
    Cluster {
        #[command(subcommand)]
        op: ClusterCmd,
    },
    /// Manage accounts, on a running node or directly on its data dir.
    User {
        #[command(subcommand)]
        op: UserCmd,
    },
    /// Client sessions of the whole cluster (through a running node).
    Session {
        #[command(subcommand)]
        op: SessionCmd,
    },
    /// Send a headline message to every online session of the cluster.
    Broadcast {
        /// The message text.
        message: String,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    /// List sessions: JID, node, available, resumable.
    List,
    /// End a session (full JID), on whichever node holds it.
    Kick { jid: String },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Start a local cluster of N nodes on 127.0.0.1, 127.0.0.2, ...
    /// (c2s 5222, direct TLS 5223, mesh 7222, HTTP 5280 on each address,
    /// plus --port-offset). Stops them all on Ctrl-C.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Where the nodes keep their data (one subdirectory each).
        #[arg(long, default_value = "cluster-data")]
        dir: PathBuf,
        /// Added to every port, to run beside another server.
        #[arg(long, default_value_t = 0)]
        port_offset: u16,
    },
    /// Drain a node: it stops taking clients, hands leadership and
    /// resumable sessions to other nodes, ends its streams and exits, as on
    /// SIGTERM. This config's node (through its admin socket), or any node
    /// by its mesh address with `--node` (authorized by the cluster secret).
    Drain {
        /// Mesh address of the node to drain (default: this config's node).
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove a member from the cluster (through any member).
    Remove {
        /// The id of the node to remove.
        node_id: u64,
        /// Mesh address of the member to ask (default: this config's node).
        #[arg(long)]
        node: Option<String>,
    },
    /// Make the cluster's CA and a mesh certificate per node (mutual TLS
    /// between nodes): point each node's [cluster] tls_ca, tls_cert and
    /// tls_key at its files. Run again with more ids to add nodes.
    Certs {
        /// Where the files go (the CA key stays here, off the nodes).
        #[arg(long, default_value = "cluster-certs")]
        dir: PathBuf,
        /// Node ids to make certificates for, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<u64>,
    },
    /// Members, roles, leader, term, commit and applied index.
    Status {
        /// Mesh address of the node to ask (default: this config's node).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account.
    Add {
        user: String,
        /// Password; read from standard input when absent.
        #[arg(long, short)]
        password: Option<String>,
    },
    /// Set an account's password.
    Passwd {
        user: String,
        #[arg(long, short)]
        password: Option<String>,
    },
    /// Delete an account (its sessions are closed).
    Del { user: String },
    /// Empty an account's message archive (XEP-0313).
    PurgeArchive { user: String },
    /// List accounts.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let api = Api {
        url: cli.url.clone(),
        token: cli.token.clone(),
    };
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(mut c) => {
            if let Cmd::Serve { join: Some(j) } = &cli.command {
                c.cluster.join = j.clone();
            }
            c
        }
        Err(e) => {
            eprintln!("starling: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Cmd::Cluster {
            op: ClusterCmd::Status { node },
        } => cluster_status(&config, node),
        Cmd::Cluster {
            op:
                ClusterCmd::Remove {
                    node_id,
                    node: None,
                },
        } if api.reachable(&config) => done(
            api.call(
                &config,
                "DELETE",
                &format!("/admin/api/cluster/nodes/{node_id}"),
                None,
            )
            .map(|_| println!("removed node {node_id}")),
        ),
        Cmd::Cluster {
            op: ClusterCmd::Remove { node_id, node },
        } => cluster_remove(&config, node_id, node),
        Cmd::Cluster {
            op: ClusterCmd::Drain { node: None },
        } if api.reachable(&config) => done(
            api.call(&config, "POST", "/admin/api/cluster/drain", None)
                .map(|_| println!("draining; the node exits once its sessions are handed over")),
        ),
        Cmd::Cluster {
            op: ClusterCmd::Drain { node: Some(node) },
        } => cluster_drain_remote(&config, &node),
        Cmd::Cluster {
            op: ClusterCmd::Drain { node: None },
        } => match admin::request(&config.data_dir, &AdminOp::Drain) {
            Ok(Some(r)) if r.ok => {
                println!("draining; the node exits once its sessions are handed over");
                ExitCode::SUCCESS
            }
            Ok(Some(r)) => {
                eprintln!("starling: {}", r.error.unwrap_or_default());
                ExitCode::from(1)
            }
            Ok(None) => {
                eprintln!(
                    "starling: no node is running on {}",
                    config.data_dir.display()
                );
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("starling: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Cluster {
            op:
                ClusterCmd::Up {
                    nodes,
                    dir,
                    port_offset,
                },
        } => starling::node::local_cluster::up(nodes, &dir, port_offset),
        Cmd::Cluster {
            op: ClusterCmd::Certs { dir, nodes },
        } => match starling::node::mesh_certs::make(&dir, &nodes) {
            Ok(wrote) => {
                for f in &wrote {
                    println!("wrote {}", f.display());
                }
                println!(
                    "node N: [cluster] tls_ca = \"{0}/ca.pem\", tls_cert = \"{0}/node-N.pem\", \
                     tls_key = \"{0}/node-N-key.pem\"; cluster commands: admin.pem, admin-key.pem",
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("starling: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Serve { .. } => {
            init_logging(&config.log.level);
            match starling::node::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("starling: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::User { op } => user(&config, &api, op),
        Cmd::Session { op } => session(&config, &api, op),
        Cmd::Broadcast { message } => broadcast(&config, &api, &message),
    }
}

/// Where the admin API commands go (`--url`, `--token`).
struct Api {
    url: Option<String>,
    token: Option<String>,
}

impl Api {
    fn target(&self, config: &Config) -> Result<Option<Target>, String> {
        Target::find(&config.data_dir, self.url.as_deref(), self.token.as_deref())
            .map_err(|e| e.to_string())
    }

    /// Whether to use the admin API for a command that can also go
    /// another way: always when `--url` names a node (its errors are
    /// reported, never replaced by acting on another node); else when the
    /// node running on this data dir answers there.
    fn reachable(&self, config: &Config) -> bool {
        if self.url.as_deref().is_some_and(|u| !u.is_empty()) {
            return true;
        }
        matches!(
            self.target(config),
            Ok(Some(t)) if t.call("GET", "/admin/api/status", None).is_ok()
        )
    }

    /// A request that needs a running node.
    fn call(
        &self,
        config: &Config,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let Some(t) = self.target(config)? else {
            return Err(format!(
                "no node is running on {} (or its admin API is off); pass --url to ask another",
                config.data_dir.display()
            ));
        };
        t.call(method, path, body).map_err(|e| e.to_string())
    }
}

fn session(config: &Config, api: &Api, op: SessionCmd) -> ExitCode {
    let result = match op {
        SessionCmd::List => api
            .call(config, "GET", "/admin/api/sessions", None)
            .map(|v| {
                for s in v["sessions"].as_array().into_iter().flatten() {
                    println!(
                        "{} node={} available={} resumable={}",
                        s["jid"].as_str().unwrap_or_default(),
                        s["node"],
                        s["available"],
                        s["resumable"]
                    );
                }
            }),
        SessionCmd::Kick { jid } => api
            .call(
                config,
                "DELETE",
                &format!("/admin/api/sessions/{}", admin_client::segment(&jid)),
                None,
            )
            .map(|_| println!("ended {jid}")),
    };
    done(result)
}

fn broadcast(config: &Config, api: &Api, message: &str) -> ExitCode {
    let body = serde_json::json!({ "body": message });
    done(
        api.call(config, "POST", "/admin/api/broadcast", Some(&body))
            .map(|v| println!("sent to {} sessions", v["sent"])),
    )
}

fn done(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("starling: {e}");
            ExitCode::from(1)
        }
    }
}

/// Run one mesh request (`f` gets the secret and certificate) on a small
/// runtime; `None` once the failure is reported.
fn mesh_call<T, F>(config: &Config, f: impl FnOnce(starling_cluster::MeshAuth) -> F) -> Option<T>
where
    F: std::future::Future<Output = T>,
{
    // Read-only: a command that talks to a cluster never makes a secret.
    let auth = match starling::node::server::known_mesh_auth(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("starling: {e}");
            return None;
        }
    };
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt.block_on(f(auth))),
        Err(e) => {
            eprintln!("starling: {e}");
            None
        }
    }
}

/// The mesh address to ask: `--node`, or this config's own node.
fn mesh_addr(config: &Config, node: Option<String>) -> String {
    node.unwrap_or_else(|| config.cluster.listen.replace("0.0.0.0", "127.0.0.1"))
}

/// `starling cluster drain --node ADDR`: ask that node over the mesh.
fn cluster_drain_remote(config: &Config, node: &str) -> ExitCode {
    let Ok(payload) = serde_json::to_vec(&starling::routing::route::Relay::Drain) else {
        return ExitCode::from(1);
    };
    match mesh_call(config, |auth| async move {
        starling_cluster::remote_relay(node, &auth, payload).await
    }) {
        Some(Ok(())) => {
            println!("draining {node}; it exits once its sessions are handed over");
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("starling: cannot ask {node} to drain: {e}");
            ExitCode::from(1)
        }
        None => ExitCode::from(1),
    }
}

fn cluster_status(config: &Config, node: Option<String>) -> ExitCode {
    let addr = mesh_addr(config, node);
    let at = addr.clone();
    match mesh_call(config, |auth| async move {
        starling_cluster::remote_status(&addr, &auth).await
    }) {
        Some(Ok(s)) => {
            println!(
                "node {} ({}) term {} leader {} commit {} applied {}",
                s.id, s.role, s.term, s.leader, s.commit, s.applied
            );
            if !s.app.is_empty() {
                println!("{}", s.app);
            }
            println!("members:");
            for (id, a) in s.peers {
                let role = if id == s.leader { "leader" } else { "member" };
                println!("  {id}\t{a}\t{role}");
            }
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("starling: cannot reach the node at {at}: {e}");
            if e.contains("secret") {
                eprintln!("starling: pass the cluster's secret in STARLING_CLUSTER_SECRET");
            }
            if config.cluster.tls_cert.is_empty() {
                eprintln!(
                    "starling: if the mesh uses mutual TLS, set [cluster] tls_ca, tls_cert and \
                     tls_key (`starling cluster up` writes DIR/admin.toml for these commands)"
                );
            }
            ExitCode::from(1)
        }
        None => ExitCode::from(1),
    }
}

fn cluster_remove(config: &Config, id: u64, node: Option<String>) -> ExitCode {
    let addr = mesh_addr(config, node);
    let via = addr.clone();
    match mesh_call(config, |auth| async move {
        starling_cluster::remote_remove(&addr, &auth, id).await
    }) {
        Some(Ok(peers)) => {
            println!("removed node {id}; members now:");
            for (id, a) in peers {
                println!("  {id}\t{a}");
            }
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("starling: cannot remove node {id} via {via}: {e}");
            ExitCode::from(1)
        }
        None => ExitCode::from(1),
    }
}

fn user_op_http(t: &Target, op: &AdminOp) -> Result<Vec<String>, admin_client::CallError> {
    use admin_client::segment;
    use serde_json::json;
    let users = |v: serde_json::Value| {
        v["users"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str().map(str::to_string))
            .collect()
    };
    match op {
        AdminOp::Add { user, password } => t
            .call(
                "POST",
                "/admin/api/users",
                Some(&json!({ "user": user, "password": password })),
            )
            .map(|_| Vec::new()),
        AdminOp::Passwd { user, password } => t
            .call(
                "PUT",
                &format!("/admin/api/users/{}/password", segment(user)),
                Some(&json!({ "password": password })),
            )
            .map(|_| Vec::new()),
        AdminOp::Del { user } => t
            .call(
                "DELETE",
                &format!("/admin/api/users/{}", segment(user)),
                None,
            )
            .map(|_| Vec::new()),
        AdminOp::PurgeArchive { user } => t
            .call(
                "DELETE",
                &format!("/admin/api/users/{}/archive", segment(user)),
                None,
            )
            .map(|_| Vec::new()),
        AdminOp::List => t.call("GET", "/admin/api/users", None).map(users),
        AdminOp::Drain => t
            .call("POST", "/admin/api/cluster/drain", None)
            .map(|_| Vec::new()),
    }
}

fn init_logging(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(log_directives(level)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `[log] level`: a bare level past info ("debug", "trace") applies to
/// Starling and Raft only; the libraries under it (HTTP/2, TLS, sled) stay
/// at info, since their internals would drown what matters. A directive
/// list ("info,stanza=trace") is taken as written.
fn log_directives(level: &str) -> String {
    match level.trim() {
        l @ ("debug" | "trace") => {
            format!("info,starling={l},starling_cluster={l},raft={l},stanza={l}")
        }
        other => other.to_string(),
    }
}

fn password(given: Option<String>) -> Result<String, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn user(config: &Config, api: &Api, op: UserCmd) -> ExitCode {
    let op = match op {
        UserCmd::Add { user, password: p } => {
            password(p).map(|password| AdminOp::Add { user, password })
        }
        UserCmd::Passwd { user, password: p } => {
            password(p).map(|password| AdminOp::Passwd { user, password })
        }
        UserCmd::Del { user } => Ok(AdminOp::Del { user }),
        UserCmd::PurgeArchive { user } => Ok(AdminOp::PurgeArchive { user }),
        UserCmd::List => Ok(AdminOp::List),
    };
    let result = op.and_then(|op| run_user_op(config, api, &op).map(|users| (op, users)));
    match result {
        Ok((op, users)) => {
            // Say what was done (a silent success looked like nothing happened).
            let at = |u: &str| format!("{u}@{}", config.domain);
            match &op {
                AdminOp::Add { user, .. } => println!("added {}", at(user)),
                AdminOp::Passwd { user, .. } => println!("changed the password of {}", at(user)),
                AdminOp::Del { user } => println!("deleted {}", at(user)),
                AdminOp::PurgeArchive { user } => {
                    println!("emptied the archive of {}", at(user))
                }
                _ => {}
            }
            for u in users {
                println!("{u}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("starling: {e}");
            ExitCode::from(1)
        }
    }
}

/// An account operation through the running node's admin HTTP API (the
/// address it wrote to the data dir, or `--url`); with no node running,
/// through the admin socket of a node without HTTP admin, or directly on
/// the data dir.
fn run_user_op(config: &Config, api: &Api, op: &AdminOp) -> Result<Vec<String>, String> {
    if let Some(t) = api.target(config)? {
        match user_op_http(&t, op) {
            Ok(users) => return Ok(users),
            // A stale address file (the node was killed; its port may
            // even be another's now): go on below.
            Err(
                admin_client::CallError::Unreachable(..) | admin_client::CallError::Unauthorized(_),
            ) if !t.explicit => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    if let Some(resp) = admin::request(&config.data_dir, op)? {
        return if resp.ok {
            Ok(resp.users)
        } else {
            Err(resp.error.unwrap_or_else(|| "failed".into()))
        };
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
    let state = State::open(&config.data_dir).map_err(|e| e.to_string())?;
    // A member of a multi-node cluster takes changes only through Raft: a
    // change written here would reach no other node and be overwritten.
    let members = starling_cluster::storage::stored_peers(state.db()).unwrap_or_default();
    if members.len() > 1 && !matches!(op, AdminOp::List) {
        return Err(format!(
            "{} belongs to node {} of a {}-node cluster and no node is running on it; \
             a change made here would not reach the other nodes. Start this node and run \
             the command again, or run it against the data dir of any running member",
            config.data_dir.display(),
            config.cluster.node_id,
            members.len()
        ));
    }
    // No node is running: apply locally; the node replicates its state
    // from here on (the data dir belongs to this node alone).
    admin::execute(&state, &config.domain, op, |cmd| state.apply(cmd))
}
