//! Signed links for stores that cannot presign URLs themselves (file://,
//! memory://): a time-limited token naming the tenant, the key and the
//! method, HMAC-signed with the service's link secret, and the plain HTTP
//! route (served on the gRPC port) that honours it.
//!
//! A link is `<public url>/v1/links/<payload>.<signature>`, both parts
//! base64url; the payload is JSON, so a link can be read but not altered.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Body,
    extract::{Path as UrlPath, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::TryStreamExt as _;
use hmac::{Hmac, Mac as _};
use reelmesh_nats::TenantId;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{Expected, MediaStore, ObjectKey, StoreError};

/// What a link allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMethod {
    Get,
    Put,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LinkClaims {
    tenant: String,
    key: String,
    method: LinkMethod,
    /// Unix seconds after which the link is dead.
    expires: u64,
}

/// Why a link is refused: all answered 403, since a caller with a bad link
/// has no business learning which part was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link's signature does not match")]
    BadSignature,
    #[error("the link has expired")]
    Expired,
    #[error("the link does not allow this method")]
    WrongMethod,
}

/// Issues and checks links with one secret and one public base URL.
#[derive(Clone)]
pub struct LinkIssuer {
    secret: Arc<[u8]>,
    base_url: String,
}

impl std::fmt::Debug for LinkIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkIssuer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl LinkIssuer {
    /// `secret` empty means a random one: links then work only on this
    /// process, until it restarts (set one secret on every replica).
    pub fn new(secret: &str, base_url: &str) -> Self {
        let secret: Arc<[u8]> = if secret.is_empty() {
            Arc::from(rand::random::<[u8; 32]>().as_slice())
        } else {
            Arc::from(secret.as_bytes())
        };
        LinkIssuer {
            secret,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// A link for `method` on `key`, valid until `expires`.
    pub fn issue(
        &self,
        tenant: &TenantId,
        key: &ObjectKey,
        method: LinkMethod,
        expires: SystemTime,
    ) -> String {
        let claims = LinkClaims {
            tenant: tenant.to_string(),
            key: key.to_string(),
            method,
            expires: unix_seconds(expires),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signature = URL_SAFE_NO_PAD.encode(self.mac(&payload));
        format!("{}/v1/links/{payload}.{signature}", self.base_url)
    }

    /// The object a token allows `method` on, now.
    pub fn check(
        &self,
        token: &str,
        method: LinkMethod,
        now: SystemTime,
    ) -> Result<(TenantId, ObjectKey), LinkError> {
        let (payload, signature) = token.split_once('.').ok_or(LinkError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| LinkError::Malformed)?;
        let mut mac = self.hmac();
        mac.update(payload.as_bytes());
        // Constant-time comparison, so timing tells nothing about the secret.
        mac.verify_slice(&signature)
            .map_err(|_| LinkError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| LinkError::Malformed)?;
        let claims: LinkClaims = serde_json::from_slice(&json).map_err(|_| LinkError::Malformed)?;
        if claims.expires < unix_seconds(now) {
            return Err(LinkError::Expired);
        }
        if claims.method != method {
            return Err(LinkError::WrongMethod);
        }
        let tenant = TenantId::parse(&claims.tenant).map_err(|_| LinkError::Malformed)?;
        let key = ObjectKey::parse(&claims.key).map_err(|_| LinkError::Malformed)?;
        Ok((tenant, key))
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        Hmac::<Sha256>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!())
    }

    fn mac(&self, payload: &str) -> Vec<u8> {
        let mut mac = self.hmac();
        mac.update(payload.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[derive(Clone)]
struct Links {
    store: MediaStore,
    issuer: LinkIssuer,
}

/// The HTTP route links point at: GET streams the object, PUT stores the
/// request body (all or nothing, like an Upload).
pub fn routes(store: MediaStore, issuer: LinkIssuer) -> Router {
    Router::new()
        .route("/v1/links/{token}", get(download).put(upload))
        .with_state(Links { store, issuer })
}

async fn download(State(links): State<Links>, UrlPath(token): UrlPath<String>) -> Response {
    let (tenant, key) = match links
        .issuer
        .check(&token, LinkMethod::Get, SystemTime::now())
    {
        Ok(allowed) => allowed,
        Err(err) => return (StatusCode::FORBIDDEN, err.to_string()).into_response(),
    };
    let size = match links.store.stat(&tenant, &key).await {
        Ok(object) => object.size_bytes,
        Err(err) => return store_error(err),
    };
    match links.store.download(&tenant, &key).await {
        Ok(chunks) => (
            [(header::CONTENT_LENGTH, size.to_string())],
            Body::from_stream(chunks),
        )
            .into_response(),
        Err(err) => store_error(err),
    }
}

async fn upload(
    State(links): State<Links>,
    UrlPath(token): UrlPath<String>,
    body: Body,
) -> Response {
    let (tenant, key) = match links
        .issuer
        .check(&token, LinkMethod::Put, SystemTime::now())
    {
        Ok(allowed) => allowed,
        Err(err) => return (StatusCode::FORBIDDEN, err.to_string()).into_response(),
    };
    let chunks = body
        .into_data_stream()
        .map_err(|err| StoreError::InvalidArgument(format!("upload broke: {err}")));
    match links
        .store
        .upload(&tenant, &key, Expected::default(), Box::pin(chunks))
        .await
    {
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(err) => store_error(err),
    }
}

fn store_error(err: StoreError) -> Response {
    let status = match err {
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::BadKey(_) | StoreError::InvalidArgument(_) | StoreError::Mismatch(_) => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, err.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(link: &str) -> &str {
        link.rsplit('/').next().unwrap_or_default()
    }

    /// A GET link for acme's `in/a.mp4`, good for a minute from `now`.
    fn minute_link(issuer: &LinkIssuer, now: SystemTime) -> (TenantId, ObjectKey, String) {
        let tenant = TenantId::parse("acme").expect("tenant");
        let key = ObjectKey::parse("in/a.mp4").expect("key");
        let expires = now + Duration::from_secs(60);
        let link = issuer.issue(&tenant, &key, LinkMethod::Get, expires);
        (tenant, key, link)
    }

    #[test]
    fn links_allow_one_method_until_they_expire() {
        let issuer = LinkIssuer::new("secret", "http://store:1/");
        let now = SystemTime::now();
        let (tenant, key, link) = minute_link(&issuer, now);
        assert!(link.starts_with("http://store:1/v1/links/"), "{link}");
        let token = parts(&link);
        assert_eq!(issuer.check(token, LinkMethod::Get, now), Ok((tenant, key)));
        assert_eq!(
            issuer.check(token, LinkMethod::Put, now),
            Err(LinkError::WrongMethod)
        );
        let later = now + Duration::from_secs(120);
        assert_eq!(
            issuer.check(token, LinkMethod::Get, later),
            Err(LinkError::Expired)
        );
    }

    #[test]
    fn altered_or_foreign_links_are_refused() {
        let issuer = LinkIssuer::new("secret", "http://store:1");
        let now = SystemTime::now();
        let (_, _, link) = minute_link(&issuer, now);
        let token = parts(&link);
        let (payload, signature) = token.split_once('.').expect("two parts");
        let claims =
            String::from_utf8(URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
        let forged = URL_SAFE_NO_PAD.encode(claims.replace("acme", "evil"));
        assert_eq!(
            issuer.check(&format!("{forged}.{signature}"), LinkMethod::Get, now),
            Err(LinkError::BadSignature)
        );
        let other = LinkIssuer::new("another secret", "http://store:1");
        assert_eq!(
            other.check(token, LinkMethod::Get, now),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            issuer.check("no-dot", LinkMethod::Get, now),
            Err(LinkError::Malformed)
        );
    }
}
