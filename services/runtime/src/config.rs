//! Typed configuration from defaults, then a TOML file, then environment.
//!
//! Every service has one config struct whose `Default` runs locally. A file
//! named by `REELMESH_CONFIG` (or passed explicitly) overrides the defaults,
//! and `REELMESH_<SERVICE>_<FIELD>` variables override the file, with `__`
//! between nested fields (`REELMESH_GATEWAY_TOPOLOGY__IN_MEMORY=true`).

use std::path::Path;

use figment::{
    Figment,
    providers::{Env, Format as _, Serialized, Toml},
};
use serde::{Serialize, de::DeserializeOwned};

/// Exit code for a configuration error (EX_CONFIG would be 78; 64 is
/// EX_USAGE, which is what linkerd and most CLIs use for bad input).
pub const EXIT_BAD_CONFIG: i32 = 64;

#[derive(Debug, thiserror::Error)]
#[error("bad configuration for {service}: {message}")]
pub struct ConfigError {
    pub service: String,
    pub message: String,
}

/// Loads `T` for `service` ("gateway", "render", ...). A service whose config
/// lives in a section of a shared file reads the `[service]` table.
pub fn load_config<T>(service: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    let file = file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("REELMESH_CONFIG").map(Into::into));
    if let Some(file) = file {
        if !file.is_file() {
            return Err(ConfigError {
                service: service.into(),
                message: format!("config file {} does not exist", file.display()),
            });
        }
        // Each top-level table of the file is a profile; this service's one
        // is selected and overrides the defaults.
        figment = figment.merge(Toml::file(file).nested()).select(service);
    }
    let prefix = format!("REELMESH_{}_", service.to_ascii_uppercase());
    figment
        // Global, so the environment beats the file's selected profile.
        .merge(Env::prefixed(&prefix).split("__").global())
        .extract()
        .map_err(|err| ConfigError {
            service: service.into(),
            message: err.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Sample {
        listen: String,
        workers: u32,
    }

    #[test]
    fn file_overrides_defaults_and_names_the_service() {
        let dir = std::env::temp_dir().join(format!("reelmesh-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("reelmesh.toml");
        std::fs::write(&file, "[sample]\nworkers = 4\n[other]\nworkers = 9\n").expect("write");
        let loaded: Sample = load_config("sample", Some(&file)).expect("load");
        assert_eq!(
            loaded,
            Sample {
                listen: String::new(),
                workers: 4
            }
        );

        std::fs::write(&file, "[sample]\nworkers = \"many\"\n").expect("write");
        let err = load_config::<Sample>("sample", Some(&file)).expect_err("bad type");
        assert!(err.to_string().contains("sample"), "{err}");
        assert!(err.to_string().contains("workers"), "{err}");
        std::fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load_config::<Sample>("sample", Some(Path::new("/nonexistent/x.toml")))
            .expect_err("missing");
        assert!(err.message.contains("does not exist"));
    }
}
