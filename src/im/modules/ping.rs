//! XEP-0199 XMPP Ping: the server answers pings to itself and to the account.

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::xml::ns;
use crate::im::context::ImCtx;

pub struct Ping;

impl Module for Ping {
    fn features(&self, _: &ImCtx) -> Vec<&'static str> {
        vec![ns::PING]
    }

    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![
            (IqKind::Get, Addressee::Host, ns::PING),
            (IqKind::Get, Addressee::Account, ns::PING),
        ]
    }

    fn handle_iq(&self, _req: &IqRequest) -> IqResponse {
        Ok(None).into()
    }
}
