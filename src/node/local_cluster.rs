//! `starling cluster up --nodes N`: a local cluster to try clustering with
//! one command. Node i listens on 127.0.0.i (c2s 5222, direct TLS 5223,
//! mesh 7222, HTTP 5280, each plus an offset), keeps its data in
//! DIR/node<i>, and joins through node 1; the mesh uses mutual TLS with
//! certificates made in DIR/certs, and DIR/admin.toml is the config for
//! `starling cluster status` and the other cluster commands. The same topology runs in
//! docker-compose.yml behind HAProxy.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

fn port(base: u16, offset: u16) -> u16 {
    base.saturating_add(offset)
}

pub fn up(nodes: u8, dir: &Path, offset: u16) -> ExitCode {
    if nodes == 0 {
        eprintln!("starling: --nodes must be at least 1");
        return ExitCode::from(2);
    }
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("starling: cannot create {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let secret_path = dir.join("cluster.secret");
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(s) => s.trim().to_string(),
        Err(_) => {
            use rand::distributions::Alphanumeric;
            use rand::Rng;
            let s: String = rand::thread_rng()
                .sample_iter(&Alphanumeric)
                .take(40)
                .map(char::from)
                .collect();
            if let Err(e) = crate::base::tls::write_private(&secret_path, s.as_bytes()) {
                eprintln!("starling: cannot write {}: {e}", secret_path.display());
                return ExitCode::from(2);
            }
            s
        }
    };
    // Mutual TLS on the mesh: a CA of this cluster and a certificate per
    // node; admin.toml lets the cluster commands in (secret and admin.pem).
    let certs = dir.join("certs");
    let ids: Vec<u64> = (1..=u64::from(nodes)).collect();
    if let Err(e) = crate::node::mesh_certs::make(&certs, &ids) {
        eprintln!("starling: {e}");
        return ExitCode::from(2);
    }
    let abs = |p: std::path::PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let admin = crate::node::mesh_certs::admin_files(&certs);
    let admin_toml = format!(
        "# `starling --config {} cluster status --node 127.0.0.1:{}`\n[cluster]\nsecret = {:?}\n\
         tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        dir.join("admin.toml").display(),
        port(7222, offset),
        secret,
        abs(admin.ca).display().to_string(),
        abs(admin.cert).display().to_string(),
        abs(admin.key).display().to_string(),
    );
    if let Err(e) = crate::base::tls::write_private(&dir.join("admin.toml"), admin_toml.as_bytes())
    {
        eprintln!(
            "starling: cannot write {}: {e}",
            dir.join("admin.toml").display()
        );
        return ExitCode::from(2);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("starling: {e}");
            return ExitCode::from(2);
        }
    };
    let seed = format!("127.0.0.1:{}", port(7222, offset));
    let mut children: Vec<Child> = Vec::new();
    for i in 1..=nodes {
        let ip = format!("127.0.0.{i}");
        let files = crate::node::mesh_certs::node_files(&certs, u64::from(i));
        let mut cmd = Command::new(&exe);
        cmd.arg("serve")
            .env("STARLING_DATA_DIR", dir.join(format!("node{i}")))
            .env(
                "STARLING_C2S_LISTEN",
                format!("{ip}:{}", port(5222, offset)),
            )
            .env(
                "STARLING_C2S_DIRECT_TLS_LISTEN",
                format!("{ip}:{}", port(5223, offset)),
            )
            .env(
                "STARLING_CLUSTER_LISTEN",
                format!("{ip}:{}", port(7222, offset)),
            )
            .env(
                "STARLING_HTTP_LISTEN",
                format!("{ip}:{}", port(5280, offset)),
            )
            .env(
                "STARLING_S2S_LISTEN",
                format!("{ip}:{}", port(5269, offset)),
            )
            .env(
                "STARLING_COMPONENT_LISTEN",
                format!("{ip}:{}", port(5347, offset)),
            )
            .env("STARLING_CLUSTER_NODE_ID", i.to_string())
            .env("STARLING_CLUSTER_SECRET", &secret)
            .env("STARLING_CLUSTER_TLS_CA", abs(files.ca))
            .env("STARLING_CLUSTER_TLS_CERT", abs(files.cert))
            .env("STARLING_CLUSTER_TLS_KEY", abs(files.key))
            .env(
                "STARLING_CLUSTER_JOIN",
                if i == 1 { String::new() } else { seed.clone() },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("starling: cannot start node {i}: {e}");
                stop(&mut children);
                return ExitCode::from(1);
            }
        };
        // Its log lines, marked with the node they come from.
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("node {i} | {line}");
                }
            });
        }
        // Wait for its ready line before the next one joins.
        let Some(out) = child.stdout.take() else {
            stop(&mut children);
            return ExitCode::from(1);
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        children.push(child);
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => println!("node {i}: {line}"),
            Err(_) => {
                eprintln!("starling: node {i} did not start (see its log above)");
                stop(&mut children);
                return ExitCode::from(1);
            }
        }
    }
    println!(
        "cluster up: {nodes} nodes; data in {}; Ctrl-C stops them; \
         `starling --config {} cluster status --node 127.0.0.1:{}` asks node 1",
        dir.display(),
        dir.join("admin.toml").display(),
        port(7222, offset)
    );
    let waited = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| {
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                if let (Ok(mut t), Ok(mut i)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
            })
        });
    if waited.is_err() {
        eprintln!("starling: cannot wait for signals");
    }
    stop(&mut children);
    ExitCode::SUCCESS
}

/// SIGTERM every node (they drain and exit), then reap them.
fn stop(children: &mut Vec<Child>) {
    for c in children.iter() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
    }
    for mut c in children.drain(..) {
        for _ in 0..200 {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}
