//! External service discovery (XEP-0215, `urn:xmpp:extdisco:2`): the STUN
//! and TURN servers from `[external_services]`, so clients can make audio
//! and video calls (XEP-0167). TURN credentials are time-limited, made with
//! the shared secret of coturn's REST API scheme (`static-auth-secret`):
//! the username is `EXPIRY:JID`, the password the base64 HMAC-SHA1 of the
//! username under the secret; any node makes the same ones, nothing is
//! stored.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::stanza_error::{StanzaCondition, StanzaError};
use crate::base::xml::Element;
use crate::im::context::ImCtx;
use crate::model::config::{
    parse_external_service as parse, ExternalService as Service, ExternalServicesSection,
};

pub const NS: &str = "urn:xmpp:extdisco:2";

pub struct ExternalServices;

/// Every configured service (entries that do not parse are refused when
/// the configuration loads).
pub fn services(cfg: &ExternalServicesSection) -> Vec<Service> {
    let stun = cfg.stun.iter().filter_map(|e| parse(e, "stun"));
    let turn = cfg.turn.iter().filter_map(|e| parse(e, "turn"));
    stun.chain(turn).collect()
}

/// coturn's REST API credentials for `jid`, valid until `expires` (unix s).
pub fn credentials(secret: &str, jid: &str, expires: u64) -> (String, String) {
    let username = format!("{expires}:{jid}");
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()) else {
        return (username, String::new());
    };
    mac.update(username.as_bytes());
    let password = B64.encode(mac.finalize().into_bytes());
    (username, password)
}

fn element(ctx: &ImCtx, s: &Service, jid: &str, with_credentials: bool) -> Element {
    let cfg = &ctx.config.external_services;
    let mut el = Element::new("service", NS)
        .with_attr("type", s.kind)
        .with_attr("host", s.host.clone())
        .with_attr("port", s.port.to_string())
        .with_attr("transport", s.transport);
    let turn = s.kind != "stun";
    if turn && !cfg.turn_secret.is_empty() {
        // §3.2: restricted services need credentials from the server.
        el.set_attr("restricted", "1");
        if with_credentials {
            let now = crate::base::time::unix_now();
            let expires = now.as_secs() + cfg.credential_ttl_secs;
            let (user, pass) = credentials(&cfg.turn_secret, jid, expires);
            el.set_attr("username", user);
            el.set_attr("password", pass);
            el.set_attr(
                "expires",
                crate::base::time::xep82(std::time::Duration::from_secs(expires)),
            );
        }
    }
    el
}

impl Module for ExternalServices {
    fn features(&self, server: &ImCtx) -> Vec<&'static str> {
        if services(&server.config.external_services).is_empty() {
            Vec::new()
        } else {
            vec![NS]
        }
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![(IqKind::Get, Addressee::Host, NS)]
    }

    fn handle_iq(&self, req: &IqRequest) -> IqResponse {
        let ctx = req.server;
        let all = services(&ctx.config.external_services);
        if all.is_empty() {
            return Err(StanzaError::new(StanzaCondition::ServiceUnavailable)).into();
        }
        let jid = req.from.to_bare().to_string();
        let p = req.payload;
        match p.name.as_str() {
            // §3.1: all services, or those of one type; credentials come
            // with them (§3.2 allows it, and saves a round trip).
            "services" => {
                let wanted = p.attr("type");
                let mut out = Element::new("services", NS);
                if let Some(t) = wanted {
                    out.set_attr("type", t);
                }
                for s in all.iter().filter(|s| wanted.is_none_or(|t| t == s.kind)) {
                    out.push_child(element(ctx, s, &jid, true));
                }
                Ok(Some(out)).into()
            }
            // §3.3: credentials for one service.
            "credentials" => {
                let Some(asked) = p.get_child("service", NS) else {
                    return Err(StanzaError::new(StanzaCondition::BadRequest)).into();
                };
                let found = all.iter().find(|s| {
                    Some(s.host.as_str()) == asked.attr("host")
                        && Some(s.kind) == asked.attr("type")
                        && asked
                            .attr("port")
                            .is_none_or(|port| port == s.port.to_string())
                });
                match found {
                    Some(s) => Ok(Some(
                        Element::new("credentials", NS).with_child(element(ctx, s, &jid, true)),
                    ))
                    .into(),
                    None => Err(StanzaError::new(StanzaCondition::ItemNotFound)).into(),
                }
            }
            _ => Err(StanzaError::new(StanzaCondition::BadRequest)).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        let s = parse("turn.example.org:3478", "stun").expect("parses");
        assert_eq!((s.kind, s.port, s.transport), ("stun", 3478, "udp"));
        let s = parse("turns:turn.example.org:5349", "turn").expect("parses");
        assert_eq!((s.kind, s.transport), ("turns", "tcp"));
        let s = parse("turn:t.example:3478?transport=tcp", "stun").expect("parses");
        assert_eq!((s.kind, s.transport), ("turn", "tcp"));
        for bad in [
            "nohost",
            "h:0",
            "h:99999",
            ":3478",
            "h:1?transport=sctp",
            "a b:1",
        ] {
            assert_eq!(parse(bad, "turn"), None, "{bad}");
        }
    }

    #[test]
    fn credentials_follow_coturn() {
        // The password is the base64 HMAC-SHA1 of the username.
        let (u, p) = credentials("north", "alice@example.org", 1_700_000_000);
        assert_eq!(u, "1700000000:alice@example.org");
        assert_eq!(B64.decode(&p).expect("base64").len(), 20);
        assert_ne!(
            p,
            credentials("south", "alice@example.org", 1_700_000_000).1
        );
    }
}
