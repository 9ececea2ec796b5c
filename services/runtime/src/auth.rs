//! API-key authentication for the public gRPC services.
//!
//! Clients send `authorization: Bearer <key>`; the key names a tenant. The
//! interceptor puts the [`Tenant`] into the request's extensions, so handlers
//! never parse metadata, and refuses the call with UNAUTHENTICATED otherwise.
//! Health and reflection are mounted without it, so probes and grpcurl's
//! `list` work without a key.

use std::{collections::BTreeMap, sync::Arc};

use reelmesh_nats::TenantId;
use serde::{Deserialize, Serialize};
use tonic::{Request, Status, service::Interceptor};

/// `api_keys = { "<key>" = "<tenant>" }` in a service's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKeys(pub BTreeMap<String, String>);

impl Default for ApiKeys {
    /// One development key, so a fresh checkout runs without configuration.
    fn default() -> Self {
        ApiKeys(BTreeMap::from([("dev-key".to_string(), "dev".to_string())]))
    }
}

/// The caller's tenant, as established by [`ApiKeyAuth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub TenantId);

impl Tenant {
    /// Reads the tenant the interceptor stored. Missing only if a service was
    /// mounted without the interceptor, which is a wiring bug.
    pub fn of<T>(request: &Request<T>) -> Result<TenantId, Status> {
        request
            .extensions()
            .get::<Tenant>()
            .map(|tenant| tenant.0.clone())
            .ok_or_else(|| Status::internal("service mounted without authentication"))
    }
}

#[derive(Debug, Clone)]
pub struct ApiKeyAuth {
    keys: Arc<BTreeMap<String, TenantId>>,
}

impl ApiKeyAuth {
    /// Validates every tenant name up front so a typo fails at start-up.
    pub fn new(keys: &ApiKeys) -> Result<Self, String> {
        let keys = keys
            .0
            .iter()
            .map(|(key, tenant)| Ok((key.clone(), TenantId::parse(tenant)?)))
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        if keys.is_empty() {
            return Err("api_keys is empty: no client could call the service".into());
        }
        Ok(ApiKeyAuth {
            keys: Arc::new(keys),
        })
    }

    fn tenant_for(&self, header: Option<&str>) -> Result<TenantId, Status> {
        let header = header.ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <api key>` metadata")
        })?;
        let key = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <api key>`"))?;
        self.keys
            .get(key.trim())
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown API key"))
    }
}

impl Interceptor for ApiKeyAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        let tenant = self.tenant_for(header)?;
        request.extensions_mut().insert(Tenant(tenant));
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> ApiKeyAuth {
        ApiKeyAuth::new(&ApiKeys(BTreeMap::from([("k1".into(), "acme".into())]))).expect("keys")
    }

    #[test]
    fn known_key_maps_to_its_tenant() {
        let tenant = auth().tenant_for(Some("Bearer k1")).expect("tenant");
        assert_eq!(tenant.as_str(), "acme");
    }

    #[test]
    fn missing_malformed_or_unknown_keys_are_unauthenticated() {
        for header in [None, Some("k1"), Some("Bearer nope"), Some("Basic k1")] {
            let err = auth().tenant_for(header).expect_err("refused");
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{header:?}");
        }
    }

    #[test]
    fn bad_tenant_names_fail_at_start() {
        let keys = ApiKeys(BTreeMap::from([("k".into(), "no spaces".into())]));
        assert!(ApiKeyAuth::new(&keys).is_err());
    }
}
