//! Standard Webhooks signatures: `v1,` + base64 HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed by the base64 part of a
//! `whsec_` secret. Receivers verify them with any Standard Webhooks library.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhook secret must be \"whsec_\" followed by base64")]
pub struct BadSecret;

/// A decoded signing key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    pub fn from_secret(secret: &str) -> Result<Self, BadSecret> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        STANDARD
            .decode(encoded)
            .map(SigningKey)
            .map_err(|_| BadSecret)
    }

    /// The value of the `webhook-signature` header.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's test vectors.
    #[test]
    fn matches_the_specification_example() {
        let key =
            SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        let signature = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rejects_a_secret_that_is_not_base64() {
        assert_eq!(
            SigningKey::from_secret("whsec_not base64!").expect_err("bad"),
            BadSecret
        );
    }
}
