//! What the IM layer (delivery, presence, the feature modules) works with:
//! the routing layer's context ([`RoutingCtx`], reached through `Deref`)
//! and the IM layer's own registries: the feature modules, the presence
//! actors, the hosted service domains and the login throttle.

use std::sync::{Arc, Weak};

use crate::im::modules::Modules;
use crate::model::sasl::throttle::AuthThrottle;
use crate::routing::context::RoutingCtx;

pub struct ImCtx {
    pub routing: Arc<RoutingCtx>,
    pub modules: Modules,
    pub presence: crate::im::presence::PresenceRegistry,
    /// Hosted service domains (`[services]`).
    pub services: crate::im::services::Services,
    /// Failed logins per account and address (registration and SASL).
    pub throttle: AuthThrottle,
    /// The server's own capabilities hash (XEP-0115), made on first use
    /// from what the modules declared (`modules::disco::server_caps`).
    pub(crate) server_caps: std::sync::OnceLock<String>,
    /// This context itself, for code that holds only a reference.
    me: Weak<ImCtx>,
}

impl ImCtx {
    pub fn new(
        routing: Arc<RoutingCtx>,
        modules: Modules,
        services: crate::im::services::Services,
    ) -> Arc<ImCtx> {
        Arc::new_cyclic(|me| ImCtx {
            routing,
            modules,
            presence: Default::default(),
            services,
            throttle: AuthThrottle::default(),
            server_caps: Default::default(),
            me: me.clone(),
        })
    }

    /// An owning handle on this context (alive as long as the server runs).
    pub fn arc(&self) -> Option<Arc<ImCtx>> {
        self.me.upgrade()
    }

    /// A handle on this context that does not keep it alive (for tasks
    /// that should end with the node).
    pub fn weak(&self) -> Weak<ImCtx> {
        self.me.clone()
    }
}

impl std::ops::Deref for ImCtx {
    type Target = RoutingCtx;

    fn deref(&self) -> &RoutingCtx {
        &self.routing
    }
}
