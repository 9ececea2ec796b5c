//! Ids of the things reelmesh keeps in NATS (jobs, assets): UUIDv7 in simple
//! form, so they sort by creation time and are valid subject and KV key
//! tokens. One macro, so every kind of id parses and prints the same way.

/// Defines `$name`, a time-ordered id; `$what` names it in parse errors.
macro_rules! time_ordered_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new() -> Self {
                $name(uuid::Uuid::now_v7().simple().to_string())
            }

            pub fn parse(id: &str) -> Result<Self, String> {
                uuid::Uuid::try_parse(id)
                    .map(|uuid| $name(uuid.simple().to_string()))
                    .map_err(|_| format!("{} id {id:?} is not a reelmesh {} id", $what, $what))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// How long ago the id was made, from the UUIDv7's timestamp;
            /// `None` for a clock behind it.
            pub fn age(&self) -> Option<std::time::Duration> {
                let uuid = uuid::Uuid::try_parse(&self.0).ok()?;
                let (secs, nanos) = uuid.get_timestamp()?.to_unix();
                let made = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
                std::time::SystemTime::now().duration_since(made).ok()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                $name::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

pub(crate) use time_ordered_id;
