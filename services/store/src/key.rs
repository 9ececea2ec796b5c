//! Object keys as clients write them ("inputs/clip.mp4") and where they live
//! in the backend ("tenants/<tenant>/inputs/clip.mp4").
//!
//! Validation happens once, here, so no path a client sends can escape its
//! tenant's prefix or confuse a backend.

use object_store::path::Path;
use reelmesh_nats::TenantId;

/// Longest key accepted; S3 allows 1024 bytes for the whole name including
/// our tenant prefix, so leave room for it.
pub const MAX_KEY_BYTES: usize = 900;

/// A validated key relative to a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {key:?}: {reason}")]
pub struct KeyError {
    pub key: String,
    pub reason: &'static str,
}

impl ObjectKey {
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        let reject = |reason| {
            Err(KeyError {
                key: key.chars().take(120).collect(),
                reason,
            })
        };
        if key.is_empty() {
            return reject("is empty");
        }
        if key.len() > MAX_KEY_BYTES {
            return reject("is longer than 900 bytes");
        }
        if key.starts_with('/') || key.starts_with('\\') {
            return reject("must be relative, not an absolute path");
        }
        if key.chars().any(char::is_control) {
            return reject("contains control characters");
        }
        if key.split(['/', '\\']).any(|part| part == "..") {
            return reject("must not contain '..'");
        }
        if key.split('/').any(|part| part.is_empty() || part == ".") {
            return reject("has an empty or '.' path segment");
        }
        Ok(ObjectKey(key.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where this key lives in the backend.
    pub fn location(&self, tenant: &TenantId) -> Path {
        Path::from(format!("tenants/{tenant}/{}", self.0))
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_are_accepted_and_prefixed() {
        let key = ObjectKey::parse("inputs/clip one.mp4").expect("valid");
        let tenant = TenantId::parse("acme").expect("tenant");
        assert_eq!(
            key.location(&tenant).as_ref(),
            "tenants/acme/inputs/clip one.mp4"
        );
    }

    #[test]
    fn escaping_or_odd_keys_are_refused() {
        let long = "a".repeat(MAX_KEY_BYTES + 1);
        for bad in [
            "",
            "/etc/passwd",
            "../other/x",
            "a/../../b",
            "a\\..\\b",
            "a//b",
            "./a",
            "a/",
            "tab\there",
            "nul\0",
            long.as_str(),
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn error_names_the_key() {
        let err = ObjectKey::parse("../x").expect_err("refused");
        assert!(err.to_string().contains("\"../x\""), "{err}");
    }
}
