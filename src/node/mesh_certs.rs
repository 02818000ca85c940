//! `starling cluster certs`: the cluster's own CA and a certificate per
//! node for mutual TLS on the mesh (`cluster/src/mesh_tls.rs` checks them).
//! Run again with more ids to add nodes: the CA is read back from
//! `ca-key.pem`, and certificates already made are kept.
//!
//! Files in the directory: `ca.pem`, `ca-key.pem` (keep it off the nodes),
//! `node-<id>.pem` and `node-<id>-key.pem` for each node, `admin.pem` and
//! `admin-key.pem` for the cluster commands (`status`, `remove`, `drain`).

use std::path::{Path, PathBuf};

use starling_cluster::CertAuthority;

/// The files of one node, for `[cluster] tls_ca`, `tls_cert`, `tls_key`.
pub struct NodeFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn node_files(dir: &Path, id: u64) -> NodeFiles {
    NodeFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}-key.pem")),
    }
}

pub fn admin_files(dir: &Path) -> NodeFiles {
    NodeFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("admin.pem"),
        key: dir.join("admin-key.pem"),
    }
}

fn write(path: &Path, data: &str, private: bool) -> Result<(), String> {
    let r = if private {
        crate::base::tls::write_private(path, data.as_bytes())
    } else {
        std::fs::write(path, data)
    };
    r.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Make (or complete) the CA and the certificates of `ids` in `dir`.
/// Returns the files it wrote.
pub fn make(dir: &Path, ids: &[u64]) -> Result<Vec<PathBuf>, String> {
    if let Some(bad) = ids.iter().find(|id| **id == 0 || **id > 4095) {
        return Err(format!("node id {bad} is not between 1 and 4095"));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let mut wrote = Vec::new();
    // A new CA only where there is none: a CA certificate without its key
    // (kept elsewhere, or unreadable) is never replaced, or the nodes'
    // certificates would stop verifying.
    let ca = match std::fs::read_to_string(&ca_key) {
        Ok(key) => {
            CertAuthority::from_key_pem(&key).map_err(|e| format!("{}: {e}", ca_key.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !ca_cert.exists() => {
            let ca = CertAuthority::generate().map_err(|e| e.to_string())?;
            write(&ca_key, &ca.key_pem(), true)?;
            write(&ca_cert, &ca.cert_pem(), false)?;
            wrote.extend([ca_key.clone(), ca_cert.clone()]);
            ca
        }
        Err(e) => {
            return Err(format!(
                "{} is there but its key {} cannot be read ({e}): put the CA key back to add \
                 certificates, or use another directory for a new CA",
                ca_cert.display(),
                ca_key.display()
            ))
        }
    };
    if !ca_cert.exists() {
        write(&ca_cert, &ca.cert_pem(), false)?;
        wrote.push(ca_cert.clone());
    }
    let ca_pem = std::fs::read(&ca_cert).map_err(|e| format!("{}: {e}", ca_cert.display()))?;
    let mut issue =
        |files: NodeFiles, made: Result<(String, String), starling_cluster::TlsError>| {
            if files.cert.exists() && files.key.exists() {
                return Ok(());
            }
            let (cert, key) = made.map_err(|e| e.to_string())?;
            // The new certificate verifies against the CA file the nodes
            // have (a ca.pem of another key would make certificates
            // nobody trusts).
            starling_cluster::MeshTls::from_pem(
                ca_pem.clone(),
                cert.clone().into_bytes(),
                key.clone().into_bytes(),
            )
            .map_err(|e| format!("{}: {e}", ca_cert.display()))?;
            write(&files.key, &key, true)?;
            write(&files.cert, &cert, false)?;
            wrote.extend([files.cert, files.key]);
            Ok::<(), String>(())
        };
    for id in ids {
        issue(node_files(dir, *id), ca.issue(*id))?;
    }
    issue(admin_files(dir), ca.issue_admin())?;
    Ok(wrote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_load_and_a_second_run_adds_a_node_under_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = make(dir.path(), &[1, 2]).expect("make");
        assert_eq!(first.len(), 8, "{first:?}");
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        // A node added later gets a certificate the first CA file verifies.
        let second = make(dir.path(), &[1, 2, 3]).expect("add node 3");
        assert_eq!(second.len(), 2, "only node 3's files: {second:?}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        for files in [
            node_files(dir.path(), 1),
            node_files(dir.path(), 3),
            admin_files(dir.path()),
        ] {
            starling_cluster::MeshTls::load(&files.ca, &files.cert, &files.key)
                .expect("signed by the cluster CA");
        }
        assert!(make(dir.path(), &[0]).is_err());
        // Without its key the CA is not replaced: adding a node fails.
        std::fs::rename(
            dir.path().join("ca-key.pem"),
            dir.path().join("kept-away.pem"),
        )
        .unwrap();
        let e = make(dir.path(), &[4]).unwrap_err();
        assert!(e.contains("cannot be read"), "{e}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        assert!(!dir.path().join("node-4.pem").exists());
    }
}
