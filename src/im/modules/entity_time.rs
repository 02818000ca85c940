//! XEP-0202 Entity Time: the server's clock, in UTC.

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::xml::Element;
use crate::im::context::ImCtx;

pub const NS: &str = "urn:xmpp:time";

pub struct EntityTime;

impl Module for EntityTime {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec![NS]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![(IqKind::Get, Addressee::Host, NS)]
    }

    fn handle_iq(&self, _req: &IqRequest) -> IqResponse {
        let q = Element::new("time", NS)
            .with_child(Element::new("tzo", NS).with_text("+00:00"))
            .with_child(
                Element::new("utc", NS)
                    .with_text(crate::base::time::xep82(crate::base::time::unix_now())),
            );
        Ok(Some(q)).into()
    }
}
