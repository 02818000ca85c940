//! SCRAM server side (RFC 5802, RFC 7677) with tls-exporter channel
//! binding for the -PLUS variants (RFC 9266).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::credentials::{ScramHash, ScramKeys};
use super::SaslFailure;

/// The channel-binding type we support (RFC 9266).
pub const CB_TYPE: &str = "tls-exporter";

/// One SCRAM exchange on the server.
pub struct ScramServer {
    hash: ScramHash,
    /// The client chose a -PLUS mechanism.
    plus: bool,
    /// Channel-binding data of this connection, when TLS 1.3 gives one;
    /// when present we advertised -PLUS.
    cb_data: Option<Vec<u8>>,
    state: State,
    /// Keys unknown users' fake salts (see `with_fake_salt_key`).
    fake_salt_key: Vec<u8>,
}

enum State {
    Initial,
    SentFirst {
        username: String,
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        keys: Option<ScramKeys>,
    },
    Done,
}

/// The outcome of the final step: the authenticated username and the
/// server-final-message for `<success/>`.
pub struct ScramSuccess {
    pub username: String,
    pub server_final: Vec<u8>,
}

impl ScramServer {
    pub fn new(hash: ScramHash, plus: bool, cb_data: Option<Vec<u8>>) -> Self {
        ScramServer {
            fake_salt_key: Vec::new(),
            hash,
            plus,
            cb_data,
            state: State::Initial,
        }
    }

    /// The server's secret for unknown users' fake salts: without it a
    /// prober could compute them (a plain hash of the name) and tell which
    /// accounts exist.
    pub fn with_fake_salt_key(mut self, key: &[u8]) -> Self {
        self.fake_salt_key = key.to_vec();
        self
    }

    /// Handle client-first-message; `lookup` maps a raw SASL username to the
    /// normalized username and its keys. Unknown users get a fake salt so the
    /// exchange does not reveal whether the account exists.
    pub fn client_first(
        &mut self,
        msg: &[u8],
        lookup: impl FnOnce(&str) -> Option<(String, Option<ScramKeys>)>,
    ) -> Result<Vec<u8>, SaslFailure> {
        if !matches!(self.state, State::Initial) {
            return Err(SaslFailure::MalformedRequest);
        }
        let msg = std::str::from_utf8(msg).map_err(|_| SaslFailure::MalformedRequest)?;
        // gs2-header = gs2-cbind-flag "," [ authzid ] ","
        let mut parts = msg.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslFailure::MalformedRequest);
        };
        match flag {
            "n" if !self.plus => {}
            // The client supports binding but thinks we do not: if we offered
            // -PLUS, someone stripped it (RFC 5802 §6 downgrade protection).
            "y" if !self.plus => {
                if self.cb_data.is_some() {
                    return Err(SaslFailure::NotAuthorized);
                }
            }
            f if f.starts_with("p=") && self.plus => {
                if &f[2..] != CB_TYPE || self.cb_data.is_none() {
                    return Err(SaslFailure::NotAuthorized);
                }
            }
            _ => return Err(SaslFailure::MalformedRequest),
        }
        let mut username_raw = None;
        let mut cnonce = None;
        for (i, attr) in bare.split(',').enumerate() {
            match (i, attr.split_at_checked(2)) {
                (0, Some(("m=", _))) => return Err(SaslFailure::MalformedRequest),
                (0, Some(("n=", v))) => username_raw = Some(decode_saslname(v)?),
                (1, Some(("r=", v))) => cnonce = Some(v.to_string()),
                (0 | 1, _) => return Err(SaslFailure::MalformedRequest),
                _ => {}
            }
        }
        let (Some(username_raw), Some(cnonce)) = (username_raw, cnonce) else {
            return Err(SaslFailure::MalformedRequest);
        };
        if cnonce.is_empty()
            || !cnonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(SaslFailure::MalformedRequest);
        }
        if !authzid.is_empty() {
            let authzid = authzid
                .strip_prefix("a=")
                .ok_or(SaslFailure::MalformedRequest)
                .and_then(decode_saslname)?;
            // Only "authenticate as myself" is supported.
            if authzid.split('@').next() != Some(username_raw.as_str()) {
                return Err(SaslFailure::InvalidAuthzid);
            }
        }
        let (username, keys) = lookup(&username_raw).ok_or(SaslFailure::NotAuthorized)?;
        let mut snonce = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut snonce);
        let nonce = format!("{cnonce}{}", B64.encode(snonce));
        let (salt, iterations) = match &keys {
            Some(k) => (k.salt.clone(), k.iterations),
            None => {
                // Deterministic per username, so repeated probes look
                // stable; keyed, so nobody else can compute it.
                let fake = self.hash.hmac(&self.fake_salt_key, username.as_bytes());
                (fake[..16].to_vec(), super::credentials::DEFAULT_ITERATIONS)
            }
        };
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        let gs2_header = msg[..msg.len() - bare.len()].to_string();
        self.state = State::SentFirst {
            username,
            gs2_header,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            keys,
        };
        Ok(server_first.into_bytes())
    }

    /// Handle client-final-message: check binding, nonce and proof.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<ScramSuccess, SaslFailure> {
        let State::SentFirst {
            username,
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
            keys,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(SaslFailure::MalformedRequest);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| SaslFailure::MalformedRequest)?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(SaslFailure::MalformedRequest)?;
        let mut cbind = None;
        let mut rnonce = None;
        for (i, attr) in without_proof.split(',').enumerate() {
            match (i, attr.split_at_checked(2)) {
                (0, Some(("c=", v))) => cbind = Some(v),
                (1, Some(("r=", v))) => rnonce = Some(v),
                (0 | 1, _) => return Err(SaslFailure::MalformedRequest),
                _ => {}
            }
        }
        let (Some(cbind), Some(rnonce)) = (cbind, rnonce) else {
            return Err(SaslFailure::MalformedRequest);
        };
        let cbind = B64
            .decode(cbind)
            .map_err(|_| SaslFailure::IncorrectEncoding)?;
        let mut expected = gs2_header.clone().into_bytes();
        if self.plus {
            expected.extend_from_slice(self.cb_data.as_deref().unwrap_or_default());
        }
        if cbind.ct_eq(&expected).unwrap_u8() != 1 {
            return Err(SaslFailure::NotAuthorized);
        }
        if rnonce != nonce {
            return Err(SaslFailure::NotAuthorized);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| SaslFailure::IncorrectEncoding)?;
        let keys = keys.ok_or(SaslFailure::NotAuthorized)?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = self.hash.hmac(&keys.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(SaslFailure::NotAuthorized);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if self.hash.h(&client_key).ct_eq(&keys.stored_key).unwrap_u8() != 1 {
            return Err(SaslFailure::NotAuthorized);
        }
        let server_signature = self.hash.hmac(&keys.server_key, auth_message.as_bytes());
        Ok(ScramSuccess {
            username,
            server_final: format!("v={}", B64.encode(server_signature)).into_bytes(),
        })
    }
}

/// RFC 5802 §5.1: "=2C" is ',' and "=3D" is '='; any other '=' is an error.
fn decode_saslname(s: &str) -> Result<String, SaslFailure> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(SaslFailure::MalformedRequest),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Client side, for our tests and the load driver: computes the messages a
/// SCRAM client sends (RFC 5802 §3).
pub mod client {
    use super::*;

    pub struct ScramClient {
        pub hash: ScramHash,
        pub gs2_header: String,
        pub client_first_bare: String,
        pub password: String,
        pub cb_data: Vec<u8>,
    }

    impl ScramClient {
        pub fn new(
            hash: ScramHash,
            username: &str,
            password: &str,
            cb_data: Option<Vec<u8>>,
        ) -> Self {
            let mut n = [0u8; 18];
            rand::thread_rng().fill_bytes(&mut n);
            let gs2_header = match cb_data {
                Some(_) => format!("p={CB_TYPE},,"),
                None => "n,,".to_string(),
            };
            ScramClient {
                hash,
                gs2_header,
                client_first_bare: format!(
                    "n={},r={}",
                    username.replace('=', "=3D").replace(',', "=2C"),
                    B64.encode(n)
                ),
                password: password.to_string(),
                cb_data: cb_data.unwrap_or_default(),
            }
        }

        pub fn first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
        }

        /// Returns (client-final-message, expected server signature).
        pub fn final_message(&self, server_first: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
            self.final_message_with(server_first, |salt, iter| {
                self.hash.hi(self.password.as_bytes(), salt, iter)
            })
        }

        /// As `final_message`, with the SaltedPassword from `salted` (a
        /// client may cache it per salt and iteration count, RFC 5802 §5.1).
        pub fn final_message_with(
            &self,
            server_first: &[u8],
            salted: impl FnOnce(&[u8], u32) -> Vec<u8>,
        ) -> Option<(Vec<u8>, Vec<u8>)> {
            let sf = std::str::from_utf8(server_first).ok()?;
            let mut nonce = None;
            let mut salt = None;
            let mut iter = None;
            for a in sf.split(',') {
                match a.split_at_checked(2)? {
                    ("r=", v) => nonce = Some(v),
                    ("s=", v) => salt = B64.decode(v).ok(),
                    ("i=", v) => iter = v.parse::<u32>().ok(),
                    _ => {}
                }
            }
            let (nonce, salt, iter) = (nonce?, salt?, iter?);
            let mut cb = self.gs2_header.clone().into_bytes();
            cb.extend_from_slice(&self.cb_data);
            let without_proof = format!("c={},r={nonce}", B64.encode(cb));
            let salted = salted(&salt, iter);
            let client_key = self.hash.hmac(&salted, b"Client Key");
            let stored_key = self.hash.h(&client_key);
            let auth = format!("{},{sf},{without_proof}", self.client_first_bare);
            let sig = self.hash.hmac(&stored_key, auth.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            let server_key = self.hash.hmac(&salted, b"Server Key");
            let server_sig = self.hash.hmac(&server_key, auth.as_bytes());
            Some((
                format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
                format!("v={}", B64.encode(server_sig)).into_bytes(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::ScramClient;
    use super::*;

    fn run(
        plus: bool,
        server_cb: Option<Vec<u8>>,
        client_cb: Option<Vec<u8>>,
        password: &str,
    ) -> Result<ScramSuccess, SaslFailure> {
        let keys = ScramKeys::derive(
            ScramHash::Sha256,
            "pencil",
            b"saltsaltsaltsalt".to_vec(),
            64,
        );
        let mut server = ScramServer::new(ScramHash::Sha256, plus, server_cb);
        let client = ScramClient::new(ScramHash::Sha256, "user", password, client_cb);
        let sf = server.client_first(&client.first(), |u| {
            Some((u.to_string(), Some(keys.clone())))
        })?;
        let (cf, expect) = client.final_message(&sf).unwrap();
        let ok = server.client_final(&cf)?;
        assert_eq!(ok.server_final, expect);
        Ok(ok)
    }

    #[test]
    fn full_exchange() {
        assert_eq!(run(false, None, None, "pencil").unwrap().username, "user");
        assert_eq!(
            run(false, None, None, "pen").err(),
            Some(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn channel_binding() {
        let cb = vec![7u8; 32];
        assert!(run(true, Some(cb.clone()), Some(cb.clone()), "pencil").is_ok());
        assert_eq!(
            run(true, Some(cb), Some(vec![8u8; 32]), "pencil").err(),
            Some(SaslFailure::NotAuthorized)
        );
    }

    #[test]
    fn downgrade_is_detected() {
        let mut server = ScramServer::new(ScramHash::Sha256, false, Some(vec![1; 32]));
        let r = server.client_first(b"y,,n=user,r=abc", |u| Some((u.into(), None)));
        assert_eq!(r.err(), Some(SaslFailure::NotAuthorized));
    }

    /// Issue 13: an unknown user's salt was SHA-256(username), which anyone
    /// can compute: a probe could tell which accounts exist.
    #[test]
    fn unknown_users_get_a_keyed_fake_salt() {
        let salt = |key: &[u8]| {
            let mut server =
                ScramServer::new(ScramHash::Sha256, false, None).with_fake_salt_key(key);
            let first = server
                .client_first(b"n,,n=ghost,r=abc", |u| Some((u.into(), None)))
                .expect("server-first");
            let first = String::from_utf8(first).expect("utf8");
            first
                .split(',')
                .find_map(|p| p.strip_prefix("s="))
                .expect("salt")
                .to_string()
        };
        assert_eq!(salt(b"k1"), salt(b"k1"), "stable for repeated probes");
        assert_ne!(salt(b"k1"), salt(b"k2"), "depends on the server's key");
        let unkeyed = B64.encode(&ScramHash::Sha256.h(b"ghost")[..16]);
        assert_ne!(salt(b"k1"), unkeyed);
    }

    #[test]
    fn malformed_input() {
        for bad in [&b"garbage"[..], b"n,,r=x", b"n,,n=us=er,r=x", b"\xff"] {
            let mut server = ScramServer::new(ScramHash::Sha1, false, None);
            assert!(server
                .client_first(bad, |u| Some((u.into(), None)))
                .is_err());
        }
    }
}
