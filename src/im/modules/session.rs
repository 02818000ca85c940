//! Session establishment (RFC 3921 §3), kept as a no-op for older clients;
//! advertised as optional (draft-cridland-xmpp-session-01).

use super::{Addressee, IqKind, IqRequest, IqResponse, Module};
use crate::base::xml::ns;

pub struct Session;

impl Module for Session {
    fn handles(&self) -> Vec<(IqKind, Addressee, &'static str)> {
        vec![
            (IqKind::Set, Addressee::Host, ns::SESSION),
            (IqKind::Set, Addressee::Account, ns::SESSION),
        ]
    }

    fn handle_iq(&self, _req: &IqRequest) -> IqResponse {
        Ok(None).into()
    }
}
