//! The HTTP side of XEP-0363 (§5): `PUT /upload/{id}/{name}` with the
//! slot's signed query stores a file, `GET /upload/{id}/{name}` serves it,
//! on every node.
//!
//! A PUT is streamed, chunk by chunk, to this node's disk and at the same
//! time over the mesh to the other nodes that keep a copy
//! (`upload.copies`, counting this one); it is answered 201 only once the
//! file is complete on at least two nodes (when the cluster has two) and
//! recorded in the replicated state. A GET is served from this node's disk,
//! or streamed from a node that holds the file. Nothing holds a whole file
//! in memory.
//!
//! Files expire after `upload.expire_after_secs`: the leader commits the
//! expiry, and every node deletes the files the state no longer knows.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::{Grant, Uploads};
use crate::model::state::uploads::UploadRecord;
use crate::model::state::Command;
use crate::node::server::ServerCtx;

/// A request body that sends nothing for this long is cut off.
const BODY_IDLE: Duration = Duration::from_secs(10);
/// How long the other nodes may take to confirm their copy once the body
/// has arrived.
const COPY_WAIT: Duration = Duration::from_secs(30);
/// A stored file the state does not know is removed once this old (an
/// upload is recorded within moments of its file being complete).
const UNRECORDED_AFTER: Duration = Duration::from_secs(20);
/// Bytes read from disk per chunk when serving a file.
const READ_CHUNK: usize = 64 * 1024;

fn text(status: actix_web::http::StatusCode, body: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(format!("{body}\n"))
}

fn uploads(ctx: &ServerCtx) -> Option<&Arc<Uploads>> {
    ctx.uploads.as_ref()
}

/// A partial file, removed unless finished.
struct Part(Option<std::path::PathBuf>);

impl Drop for Part {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// PUT /upload/{id}/{name}?o=&s=&t=&e=&h=
pub async fn put(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    grant: Option<web::Query<Grant>>,
    mut body: web::Payload,
    ctx: web::Data<Arc<ServerCtx>>,
) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let ctx = ctx.get_ref().clone();
    let Some(up) = uploads(&ctx).cloned() else {
        return text(S::NOT_FOUND, "no upload service here");
    };
    let (id, name) = path.into_inner();
    let Some(grant) = grant.map(|g| g.into_inner()) else {
        return text(S::FORBIDDEN, "no upload slot in the URL");
    };
    if !starling_cluster::blobs::valid_name(&id) || !up.verify(&id, &name, &grant) {
        return text(S::FORBIDDEN, "not a valid upload slot");
    }
    if grant.e < crate::base::time::unix_now().as_secs() {
        return text(S::FORBIDDEN, "the upload slot has expired");
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n != grant.s) {
        return text(
            S::BAD_REQUEST,
            "Content-Length differs from the slot's size",
        );
    }
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !grant.t.is_empty() && !ctype.is_empty() && !ctype.eq_ignore_ascii_case(&grant.t) {
        return text(S::BAD_REQUEST, "Content-Type differs from the slot's type");
    }
    let final_path = starling_cluster::blobs::path(&up.dir, &id);
    if ctx.state.upload(&id).is_some() || final_path.exists() {
        return text(S::CONFLICT, "this slot has been used");
    }
    if let Err(e) = tokio::fs::create_dir_all(&up.dir).await {
        tracing::warn!(error = %e, "cannot make the upload directory");
        return text(S::INTERNAL_SERVER_ERROR, "cannot store files");
    }
    let part_path = up
        .dir
        .join(format!(".{id}.{:016x}.part", rand::random::<u64>()));
    let mut part = Part(Some(part_path.clone()));
    let mut file = match tokio::fs::File::create(&part_path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create an upload file");
            return text(S::INTERNAL_SERVER_ERROR, "cannot store files");
        }
    };
    // The other nodes that keep a copy: the next ones by id.
    let cluster = ctx.replicator.cluster();
    let me = ctx.node_id();
    let mut others = ctx.other_nodes();
    others.sort_unstable_by_key(|n| (*n < me, *n));
    let copies = up.config.copies.max(1);
    let mut feeds = Vec::new();
    let mut copying = Vec::new();
    for node in others.iter().take(copies - 1) {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        let cluster = cluster.clone();
        let (node, id2, size) = (*node, id.clone(), grant.s);
        copying.push((
            node,
            tokio::spawn(async move { cluster.put_blob(node, &id2, size, rx).await }),
        ));
        feeds.push(Some(tx));
    }
    let mut received = 0u64;
    loop {
        let chunk = match tokio::time::timeout(BODY_IDLE, body.next()).await {
            Err(_) => return text(S::REQUEST_TIMEOUT, "the body stopped arriving"),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "upload body broke off");
                return text(S::BAD_REQUEST, "the body broke off");
            }
            Ok(Some(Ok(c))) => c,
        };
        received += chunk.len() as u64;
        if received > grant.s {
            return text(S::PAYLOAD_TOO_LARGE, "more bytes than the slot's size");
        }
        if let Err(e) = file.write_all(&chunk).await {
            tracing::warn!(error = %e, "cannot write an upload");
            return text(S::INSUFFICIENT_STORAGE, "cannot store the file");
        }
        for feed in feeds.iter_mut() {
            if let Some(tx) = feed {
                if tx.send(chunk.to_vec()).await.is_err() {
                    // That node failed; the others go on.
                    *feed = None;
                }
            }
        }
    }
    if received != grant.s {
        return text(S::BAD_REQUEST, "fewer bytes than the slot's size");
    }
    if let Err(e) = file.sync_all().await {
        tracing::warn!(error = %e, "cannot sync an upload");
        return text(S::INSUFFICIENT_STORAGE, "cannot store the file");
    }
    drop(file);
    drop(feeds);
    let mut holders = vec![me];
    for (node, task) in copying {
        match tokio::time::timeout(COPY_WAIT, task).await {
            Ok(Ok(Ok(()))) => holders.push(node),
            Ok(Ok(Err(e))) => tracing::warn!(node, error = %e, "upload not copied"),
            _ => tracing::warn!(node, "upload not copied in time"),
        }
    }
    // At least two nodes hold it when the cluster has two.
    if !others.is_empty() && copies > 1 && holders.len() < 2 {
        return text(
            S::SERVICE_UNAVAILABLE,
            "no other node could keep a copy; try again",
        );
    }
    let Some(p) = part.0.take() else {
        return text(S::INTERNAL_SERVER_ERROR, "lost the file");
    };
    if let Err(e) = tokio::fs::rename(&p, &final_path).await {
        tracing::warn!(error = %e, "cannot store an upload");
        return text(S::INTERNAL_SERVER_ERROR, "cannot store the file");
    }
    let record = UploadRecord {
        owner: grant.o.clone(),
        size: grant.s,
        content_type: if grant.t.is_empty() {
            ctype.to_string()
        } else {
            grant.t.clone()
        },
        filename: name,
        created_ms: crate::base::time::unix_now().as_millis() as u64,
        holders,
    };
    match ctx
        .replicator
        .commit_async(&Command::UploadStored {
            id: id.clone(),
            record,
        })
        .await
    {
        Ok(_) => {
            tracing::info!(id, bytes = grant.s, owner = %grant.o, "file uploaded");
            HttpResponse::Created()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
                .finish()
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&final_path).await;
            tracing::warn!(error = %e, "upload not recorded");
            text(
                S::SERVICE_UNAVAILABLE,
                "the cluster could not record it; try again",
            )
        }
    }
}

/// GET /upload/{id}/{name}
pub async fn get(
    path: web::Path<(String, String)>,
    ctx: web::Data<Arc<ServerCtx>>,
) -> HttpResponse {
    use actix_web::http::StatusCode as S;
    let ctx = ctx.get_ref().clone();
    let Some(up) = uploads(&ctx).cloned() else {
        return text(S::NOT_FOUND, "no upload service here");
    };
    let (id, _) = path.into_inner();
    if !starling_cluster::blobs::valid_name(&id) {
        return text(S::NOT_FOUND, "no such file");
    }
    let Some(record) = ctx.state.upload(&id) else {
        return text(S::NOT_FOUND, "no such file");
    };
    let (tx, rx) = mpsc::channel::<Result<web::Bytes, std::io::Error>>(4);
    let local = starling_cluster::blobs::path(&up.dir, &id);
    match tokio::fs::File::open(&local).await {
        Ok(mut f) => {
            tokio::spawn(async move {
                loop {
                    let mut buf = vec![0u8; READ_CHUNK];
                    match f.read(&mut buf).await {
                        Ok(0) => return,
                        Ok(n) => {
                            buf.truncate(n);
                            if tx.send(Ok(web::Bytes::from(buf))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            });
        }
        Err(_) => {
            // Not here: from a node that holds it.
            let cluster = ctx.replicator.cluster();
            let mut found = None;
            for node in record.holders.iter().filter(|n| **n != ctx.node_id()) {
                match cluster.get_blob(*node, &id).await {
                    Ok(Some((_, chunks))) => {
                        found = Some(chunks);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(node, error = %e, "upload not fetched"),
                }
            }
            let Some(mut chunks) = found else {
                return text(
                    S::SERVICE_UNAVAILABLE,
                    "no node that holds this file is reachable",
                );
            };
            tokio::spawn(async move {
                while let Some(c) = chunks.recv().await {
                    let item = c.map(web::Bytes::from).map_err(std::io::Error::other);
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    HttpResponse::Ok()
        .content_type(safe_type(&record.content_type))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        // What users upload is never run as this site's content.
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        ))
        .no_chunking(record.size)
        .streaming(stream)
}

/// The recorded content type if it looks like one, else a generic one.
fn safe_type(t: &str) -> String {
    let ok = !t.is_empty()
        && t.len() < 128
        && t.contains('/')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/+-.;= ".contains(&b));
    if ok {
        t.to_string()
    } else {
        "application/octet-stream".into()
    }
}

/// Expiry: the leader commits that files past `expire_after_secs` are
/// gone; every node deletes the files the state does not know (expired,
/// or never recorded) and partial files left behind.
pub async fn sweep(ctx: Arc<ServerCtx>) {
    let Some(up) = ctx.uploads.clone() else {
        return;
    };
    let expire = up.config.expire_after_secs;
    let every = if expire == 0 {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs((expire / 4).clamp(1, 3600))
    };
    let mut stopped = ctx.replicator.cluster().stopped();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        let now_ms = crate::base::time::unix_now().as_millis() as u64;
        if expire > 0 && ctx.replicator.cluster().status().role == "leader" {
            let before_ms = now_ms.saturating_sub(expire * 1000);
            if let Err(e) = ctx
                .replicator
                .commit_async(&Command::UploadExpire { before_ms })
                .await
            {
                tracing::warn!(error = %e, "upload expiry not committed; tried again later");
            }
        }
        // A partial file older than a slot lives, and a file the state
        // does not know (expired, or never recorded: a copy whose upload
        // failed) once it is older than an upload takes to be recorded.
        let grace = Duration::from_secs(up.config.slot_valid_secs.max(60) * 2);
        let Ok(mut dir) = tokio::fs::read_dir(&up.dir).await else {
            continue;
        };
        while let Ok(Some(e)) = dir.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            let age = e
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            let partial = name.starts_with('.') && name.ends_with(".part");
            let gone = if partial {
                age > grace
            } else {
                age > UNRECORDED_AFTER && ctx.state.upload(&name).is_none()
            };
            if gone {
                tracing::info!(file = %name, "upload removed (expired or unrecorded)");
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }
}
