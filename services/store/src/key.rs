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

/// A listing prefix: empty (everything), or the start of keys, either a
/// whole directory ("inputs/") or part of a name ("inputs/cl").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn parse(prefix: &str) -> Result<Self, KeyError> {
        if prefix.is_empty() {
            return Ok(KeyPrefix::default());
        }
        // A prefix obeys the key rules, except that it may end in '/'.
        ObjectKey::parse(prefix.strip_suffix('/').unwrap_or(prefix))
            .map(|_| KeyPrefix(prefix.to_string()))
            .map_err(|err| KeyError {
                key: prefix.chars().take(120).collect(),
                reason: err.reason,
            })
    }

    /// The directory holding every key with this prefix: backends list by
    /// whole path segments, so "inputs/cl" is listed from "inputs".
    pub fn directory(&self, tenant: &TenantId) -> Path {
        match self.0.rsplit_once('/') {
            Some((dir, _)) => Path::from(format!("tenants/{tenant}/{dir}")),
            None => tenant_root(tenant),
        }
    }

    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(&self.0)
    }
}

fn tenant_root(tenant: &TenantId) -> Path {
    Path::from(format!("tenants/{tenant}"))
}

/// The tenant-relative key of a backend location, if it is the tenant's.
pub fn key_of(tenant: &TenantId, location: &Path) -> Option<String> {
    let root = format!("{}/", tenant_root(tenant));
    location.as_ref().strip_prefix(&root).map(str::to_string)
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
    fn prefixes_are_keys_that_may_end_in_a_slash() {
        let tenant = TenantId::parse("acme").expect("tenant");
        let dir = KeyPrefix::parse("inputs/").expect("directory");
        assert_eq!(dir.directory(&tenant).as_ref(), "tenants/acme/inputs");
        let part = KeyPrefix::parse("inputs/cl").expect("part of a name");
        assert_eq!(part.directory(&tenant).as_ref(), "tenants/acme/inputs");
        assert!(part.matches("inputs/clip.mp4") && !part.matches("inputs/a.mp4"));
        let top = KeyPrefix::parse("in").expect("top level");
        assert_eq!(top.directory(&tenant).as_ref(), "tenants/acme");
        assert!(KeyPrefix::parse("").expect("everything").matches("x/y"));
        for bad in ["../", "/abs/", "a//", "a\0/", "a/../b"] {
            assert!(KeyPrefix::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let location = Path::from("tenants/acme/inputs/a.mp4");
        assert_eq!(key_of(&tenant, &location).as_deref(), Some("inputs/a.mp4"));
        let other = TenantId::parse("acme2").expect("tenant");
        assert_eq!(key_of(&other, &location), None);
    }

    #[test]
    fn error_names_the_key() {
        let err = ObjectKey::parse("../x").expect_err("refused");
        assert!(err.to_string().contains("\"../x\""), "{err}");
    }
}
