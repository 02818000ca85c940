//! XEP-0092 Software Version.

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::xml::{ns, Element};
use crate::im::context::ImCtx;

pub struct Version;

impl Module for Version {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec![ns::VERSION]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![(IqKind::Get, Addressee::Host, ns::VERSION)]
    }

    fn handle_iq(&self, _req: &IqRequest) -> IqResponse {
        // The operating system is left out: it only helps attackers.
        let q = Element::new("query", ns::VERSION)
            .with_child(Element::new("name", ns::VERSION).with_text("Starling"))
            .with_child(Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION")));
        Ok(Some(q)).into()
    }
}
