//! A throwaway Prosody (Debian's `prosody`) on loopback for federation
//! tests, from tests/federation/prosody.cfg.lua.in: it reaches Starling's
//! domains (listed in that file) at the given s2s address, not through DNS.
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A throwaway Prosody on loopback, killed on drop.
pub struct Prosody {
    child: Child,
    dir: tempfile::TempDir,
    pub c2s: u16,
}

impl Prosody {
    /// With `bidi`, Prosody offers and uses XEP-0288 bidirectional links.
    pub fn start(starling_s2s: SocketAddr, c2s: u16, s2s: u16, bidi: bool) -> Prosody {
        assert!(
            Command::new("prosody").arg("-v").output().is_ok(),
            "prosody is not installed: run `bash .ci/run` (apt-get install prosody)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("certs")).unwrap();
        std::fs::create_dir_all(d.join("data")).unwrap();
        let ok = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=prosody.localhost"])
            .args(["-addext", "subjectAltName=DNS:prosody.localhost"])
            .arg("-keyout")
            .arg(d.join("certs/prosody.localhost.key"))
            .arg("-out")
            .arg(d.join("certs/prosody.localhost.crt"))
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl could not make a certificate");
        let here = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/federation");
        let cfg = std::fs::read_to_string(format!("{here}/prosody.cfg.lua.in"))
            .unwrap()
            .replace("@DIR@", &d.display().to_string())
            .replace("@PLUGINS@", here)
            .replace("@C2S@", &c2s.to_string())
            .replace("@S2S@", &s2s.to_string())
            .replace("@DISABLED@", if bidi { "" } else { "\"s2s_bidi\";" })
            .replace("@ENABLED@", if bidi { "\"s2s_bidi\";" } else { "" })
            .replace("@STARLING_S2S@", &starling_s2s.port().to_string());
        assert_eq!(starling_s2s.ip().to_string(), "127.0.0.1");
        std::fs::write(d.join("prosody.cfg.lua"), cfg).unwrap();
        let child = Command::new("prosody")
            .arg("--config")
            .arg(d.join("prosody.cfg.lua"))
            .arg("-F")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prosody");
        let p = Prosody { child, dir, c2s };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", c2s)).is_err() {
            assert!(
                Instant::now() < deadline,
                "prosody did not start: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn register(&self, user: &str, password: &str) {
        let out = Command::new("prosodyctl")
            .arg("--config")
            .arg(self.dir.path().join("prosody.cfg.lua"))
            .args(["register", user, "prosody.localhost", password])
            .output()
            .expect("prosodyctl");
        assert!(out.status.success(), "prosodyctl register: {out:?}");
    }

    pub fn log(&self) -> String {
        let d = self.dir.path();
        let debug = std::fs::read_to_string(d.join("prosody.debug")).unwrap_or_default();
        let s2s: Vec<&str> = debug.lines().filter(|l| l.contains("s2s")).collect();
        format!(
            "{}\n{}\n--- prosody s2s debug (last 60)\n{}",
            std::fs::read_to_string(d.join("prosody.log")).unwrap_or_default(),
            std::fs::read_to_string(d.join("prosody.err")).unwrap_or_default(),
            s2s[s2s.len().saturating_sub(60)..].join("\n")
        )
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
