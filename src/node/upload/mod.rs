//! HTTP File Upload (XEP-0363) at `upload.DOMAIN`: a local user asks for a
//! slot (§4) and gets a signed PUT URL and a GET URL, both served by every
//! node (`files.rs`). Sizes, content types and each user's quota are
//! checked here (§4.1 errors, `file-too-large` with the maximum); the
//! upload itself is checked against the signature when it comes.
//!
//! A slot is not stored anywhere: its PUT URL carries what was granted
//! (id, name, size, type, owner, expiry) and an HMAC over it with a key
//! every node derives from the cluster secret. A file is recorded in the
//! replicated state (`state/uploads.rs`) once it is on enough nodes.

pub mod files;

use std::path::PathBuf;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::Element;
use crate::im::services::{Host, HostedService};

pub const NS: &str = "urn:xmpp:http:upload:0";

/// What the upload service and its HTTP side share.
pub struct Uploads {
    /// `upload.DOMAIN`.
    pub domain: String,
    pub config: crate::model::config::UploadSection,
    /// Where files live on this node (also the mesh's blob directory).
    pub dir: PathBuf,
    /// The URL base of the PUT and GET URLs ("http://host:port").
    pub base_url: String,
    key: [u8; 32],
}

/// What a slot grants, as its PUT URL carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Grant {
    /// Owner (bare JID).
    pub o: String,
    /// Size in bytes.
    pub s: u64,
    /// Content type ("" if none was given).
    #[serde(default)]
    pub t: String,
    /// Expiry of the PUT URL, unix seconds.
    pub e: u64,
    /// The signature (hex).
    pub h: String,
}

impl Uploads {
    pub fn new(
        domain: String,
        config: crate::model::config::UploadSection,
        dir: PathBuf,
        base_url: String,
        cluster_secret: &str,
    ) -> Uploads {
        let mut h = Sha256::new();
        h.update(b"starling upload slots\0");
        h.update(cluster_secret.as_bytes());
        Uploads {
            domain,
            config,
            dir,
            base_url: base_url.trim_end_matches('/').to_string(),
            key: h.finalize().into(),
        }
    }

    fn signature(&self, id: &str, filename: &str, g: &Grant) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        for part in [id, filename, &g.o, &g.s.to_string(), &g.t, &g.e.to_string()] {
            mac.update(part.as_bytes());
            mac.update(b"\0");
        }
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `g` was granted by a node of this cluster for this file.
    pub fn verify(&self, id: &str, filename: &str, g: &Grant) -> bool {
        use subtle::ConstantTimeEq;
        let want = self.signature(id, filename, g);
        !want.is_empty() && want.as_bytes().ct_eq(g.h.as_bytes()).into()
    }

    /// The GET URL of file `id` named `filename`.
    pub fn get_url(&self, id: &str, filename: &str) -> String {
        format!("{}/upload/{id}/{}", self.base_url, pct(filename))
    }

    /// A slot for `owner`'s file (§4), or the error to answer with.
    pub fn slot(
        &self,
        owner: &str,
        filename: &str,
        size: u64,
        content_type: &str,
        used: u64,
    ) -> Result<(String, String), StanzaError> {
        let max = self.config.max_file_size;
        if filename.is_empty() || filename.len() > 255 || filename.contains(['/', '\\', '\0']) {
            return Err(StanzaError::with_text(
                StanzaCondition::BadRequest,
                "a file name without path separators, at most 255 bytes",
            ));
        }
        if size == 0 {
            return Err(StanzaError::with_text(
                StanzaCondition::BadRequest,
                "the size must be more than 0",
            ));
        }
        if size > max {
            // §4.1: not-acceptable with the limit.
            return Err(StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                format!("the file is larger than {max} bytes"),
            )
            .with_app(
                Element::new("file-too-large", NS)
                    .with_child(Element::new("max-file-size", NS).with_text(max.to_string())),
            ));
        }
        let allowed = &self.config.allowed_types;
        if !allowed.is_empty() && !allowed.iter().any(|t| t.eq_ignore_ascii_case(content_type)) {
            return Err(StanzaError::with_text(
                StanzaCondition::NotAcceptable,
                format!("files of type {content_type:?} are not accepted"),
            ));
        }
        let quota = self.config.quota_bytes;
        if quota > 0 && used.saturating_add(size) > quota {
            return Err(StanzaError::with_text(
                StanzaCondition::ResourceConstraint,
                format!("your files would take more than your quota of {quota} bytes"),
            ));
        }
        let id = crate::transport::stream::header::new_stream_id()
            + &crate::transport::stream::header::new_stream_id();
        let now = crate::base::time::unix_now().as_secs();
        let mut g = Grant {
            o: owner.to_string(),
            s: size,
            t: content_type.to_string(),
            e: now + self.config.slot_valid_secs.max(1),
            h: String::new(),
        };
        g.h = self.signature(&id, filename, &g);
        let put = format!(
            "{}?o={}&s={}&t={}&e={}&h={}",
            self.get_url(&id, filename),
            pct(&g.o),
            g.s,
            pct(&g.t),
            g.e,
            g.h
        );
        Ok((put, self.get_url(&id, filename)))
    }
}

/// Percent-encode everything but RFC 3986's unreserved characters.
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The service at `upload.DOMAIN`.
pub struct UploadService(pub Arc<Uploads>);

impl HostedService for UploadService {
    fn identity(&self) -> (&'static str, &'static str, &'static str) {
        ("store", "file", "HTTP File Upload")
    }

    fn features(&self) -> Vec<&'static str> {
        vec![NS]
    }

    /// §3: the size limit, as an extended disco form (XEP-0128).
    fn info_extension(&self) -> Option<Element> {
        let field = |var: &str, value: &str| {
            Element::new("field", "jabber:x:data")
                .with_attr("var", var)
                .with_child(Element::new("value", "jabber:x:data").with_text(value))
        };
        let mut form = Element::new("x", "jabber:x:data").with_attr("type", "result");
        let mut ft = field("FORM_TYPE", NS);
        ft.set_attr("type", "hidden");
        form.push_child(ft);
        form.push_child(field(
            "max-file-size",
            &self.0.config.max_file_size.to_string(),
        ));
        Some(form)
    }

    fn handle(&self, _stanza: &Element) -> Vec<Element> {
        Vec::new()
    }

    fn serve_later(&self, stanza: &Element, host: &Arc<dyn Host>) -> bool {
        let Some(request) = stanza
            .get_child("request", NS)
            .filter(|_| stanza.name == "iq" && stanza.attr("type") == Some("get"))
        else {
            return false;
        };
        let from = stanza
            .attr("from")
            .and_then(|f| jid::Jid::new(f).ok())
            .map(|j| j.to_bare());
        let local = from
            .as_ref()
            .is_some_and(|j| j.domain().as_str().eq_ignore_ascii_case(&host.domain()));
        let answer = match (from, host.state()) {
            (Some(owner), Some(state)) if local => {
                let size = request.attr("size").and_then(|s| s.parse::<u64>().ok());
                match size {
                    None => Err(StanzaError::with_text(
                        StanzaCondition::BadRequest,
                        "the request needs a size",
                    )),
                    Some(size) => self.0.slot(
                        owner.as_str(),
                        request.attr("filename").unwrap_or_default(),
                        size,
                        request.attr("content-type").unwrap_or_default(),
                        state.upload_usage(owner.as_str()),
                    ),
                }
            }
            _ => Err(StanzaError::with_text(
                StanzaCondition::Forbidden,
                "only this server's users may upload here",
            )),
        };
        let reply = match answer {
            Ok((put, get)) => crate::im::modules::result(
                stanza,
                Some(
                    Element::new("slot", NS)
                        .with_child(Element::new("put", NS).with_attr("url", put))
                        .with_child(Element::new("get", NS).with_attr("url", get)),
                ),
            ),
            Err(e) => e.reply_to(stanza),
        };
        host.send(reply);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploads() -> Uploads {
        Uploads::new(
            "upload.example".into(),
            crate::model::config::UploadSection {
                max_file_size: 1000,
                quota_bytes: 5000,
                ..Default::default()
            },
            PathBuf::from("/nonexistent"),
            "http://files.example/".into(),
            "secret",
        )
    }

    fn query(url: &str) -> Grant {
        let q = url.split_once('?').unwrap().1;
        let get = |k: &str| {
            q.split('&')
                .find_map(|p| p.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        Grant {
            o: get("o").replace("%40", "@"),
            s: get("s").parse().unwrap(),
            t: get("t").replace("%2F", "/"),
            e: get("e").parse().unwrap(),
            h: get("h"),
        }
    }

    #[test]
    fn a_slot_is_signed_and_the_signature_binds_what_was_granted() {
        let u = uploads();
        let (put, get) = u
            .slot("a@example", "my photo.jpg", 500, "image/jpeg", 0)
            .unwrap();
        assert!(get.starts_with("http://files.example/upload/"));
        assert!(get.ends_with("/my%20photo.jpg"));
        let id = get.split('/').nth(4).unwrap().to_string();
        let g = query(&put);
        assert!(u.verify(&id, "my photo.jpg", &g));
        assert!(!u.verify(&id, "other.jpg", &g));
        assert!(!u.verify(
            &id,
            "my photo.jpg",
            &Grant {
                s: 501,
                ..g.clone()
            }
        ));
        assert!(!u.verify(
            &id,
            "my photo.jpg",
            &Grant {
                o: "b@example".into(),
                ..g.clone()
            }
        ));
        let other = Uploads::new(
            "upload.example".into(),
            Default::default(),
            PathBuf::new(),
            String::new(),
            "another secret",
        );
        assert!(!other.verify(&id, "my photo.jpg", &g));
    }

    #[test]
    fn size_type_and_quota_are_checked() {
        let u = uploads();
        let e = u.slot("a@example", "big", 1001, "", 0).unwrap_err();
        assert_eq!(e.condition, StanzaCondition::NotAcceptable);
        let xml = e
            .reply_to(&Element::new("iq", crate::base::xml::ns::CLIENT))
            .to_xml(crate::base::xml::ns::CLIENT);
        assert!(xml.contains("<max-file-size>1000</max-file-size>"), "{xml}");
        assert_eq!(
            u.slot("a@example", "f", 600, "", 4500)
                .unwrap_err()
                .condition,
            StanzaCondition::ResourceConstraint
        );
        assert!(u.slot("a@example", "../x", 10, "", 0).is_err());
        assert!(u.slot("a@example", "x", 0, "", 0).is_err());
    }
}
