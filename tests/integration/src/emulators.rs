//! Storage emulators for backend tests: moto's S3 server ([`S3Emulator`])
//! and Azurite's blob service ([`AzuriteEmulator`]), each a child process on
//! a free loopback port with a fresh bucket or container, killed and its
//! files removed on drop. scripts/setup.sh installs both; scripts/env.sh
//! names them in `REELMESH_MOTO_SERVER` and `REELMESH_AZURITE_BLOB`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use reelmesh_store::StoreOptions;
use sha2::Sha256;

/// The account every Azurite knows, and its published key.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// How long an emulator may take to start on a busy CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// moto's S3 server with one empty bucket.
#[derive(Debug)]
pub struct S3Emulator {
    process: EmulatorProcess,
    bucket: String,
}

impl S3Emulator {
    pub async fn start() -> anyhow::Result<Self> {
        let binary = find_binary("REELMESH_MOTO_SERVER", "venv/bin/moto_server")?;
        let process = EmulatorProcess::start("moto", &binary, |port, _dir| {
            vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ]
        })
        .await?;
        let bucket = "media".to_string();
        // moto takes unsigned requests: a plain PUT creates the bucket.
        let created = reqwest::Client::new()
            .put(format!("{}/{bucket}", process.base_url()))
            .send()
            .await?;
        anyhow::ensure!(
            created.status().is_success(),
            "moto: creating bucket {bucket}: {}",
            created.status()
        );
        Ok(S3Emulator { process, bucket })
    }

    /// Under a prefix, so the store's prefixing is exercised too.
    pub fn store_url(&self) -> String {
        format!("s3://{}/reelmesh", self.bucket)
    }

    /// Every key in the bucket, listed by a plain HTTP request: what is
    /// really on the emulator, whatever the store thinks.
    pub async fn object_keys(&self) -> anyhow::Result<Vec<String>> {
        let url = format!("{}/{}?list-type=2", self.process.base_url(), self.bucket);
        let listing = reqwest::get(url).await?.error_for_status()?.text().await?;
        Ok(listing
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>"))
            .map(|(key, _)| key.to_string())
            .collect())
    }

    /// What any S3-compatible endpoint needs: its address, plain HTTP, and
    /// credentials (moto accepts any).
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions::new([
            ("aws_endpoint", self.process.base_url()),
            ("aws_allow_http", "true".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_access_key_id", "testing".into()),
            ("aws_secret_access_key", "testing".into()),
        ])
    }
}

/// Azurite's blob service with one empty container.
#[derive(Debug)]
pub struct AzuriteEmulator {
    process: EmulatorProcess,
    container: String,
}

impl AzuriteEmulator {
    pub async fn start() -> anyhow::Result<Self> {
        let binary = find_binary("REELMESH_AZURITE_BLOB", "node_modules/.bin/azurite-blob")?;
        let process = EmulatorProcess::start("azurite", &binary, |port, dir| {
            let location = dir.join("data").display().to_string();
            [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
                &location,
                "--skipApiVersionCheck",
                "--loose",
                // Else it reports usage to Microsoft from every test run.
                "--disableTelemetry",
            ]
            .map(String::from)
            .to_vec()
        })
        .await?;
        let emulator = AzuriteEmulator {
            process,
            container: "media".to_string(),
        };
        emulator.create_container().await?;
        Ok(emulator)
    }

    pub fn store_url(&self) -> String {
        format!("az://{}/reelmesh", self.container)
    }

    /// Azurite as an ordinary account at a custom endpoint: the same
    /// settings any Azure-compatible service takes.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions::new([
            ("azure_storage_account_name", AZURITE_ACCOUNT.to_string()),
            ("azure_storage_account_key", AZURITE_KEY.to_string()),
            ("azure_storage_endpoint", self.account_url()),
            ("azure_allow_http", "true".into()),
        ])
    }

    fn account_url(&self) -> String {
        format!("{}/{AZURITE_ACCOUNT}", self.process.base_url())
    }

    /// object_store cannot create containers, so this is the one request
    /// signed here: Create Container with the account's shared key.
    async fn create_container(&self) -> anyhow::Result<()> {
        let version = "2021-08-06";
        // RFC 1123, as HTTP dates are: RFC 2822's form of UTC, spelt GMT.
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)?
            .replace("+0000", "GMT");
        let resource = format!(
            "/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{}\nrestype:container",
            self.container
        );
        // Verb, eleven empty standard headers, then x-ms-* headers and the resource.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}"
        );
        let signature = shared_key_signature(&to_sign)?;
        let created = reqwest::Client::new()
            .put(format!(
                "{}/{}?restype=container",
                self.account_url(),
                self.container
            ))
            .header("x-ms-date", &date)
            .header("x-ms-version", version)
            .header(
                "authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            )
            .send()
            .await?;
        let status = created.status();
        anyhow::ensure!(
            status.is_success(),
            "azurite: creating container {}: {status}: {}",
            self.container,
            created.text().await.unwrap_or_default()
        );
        Ok(())
    }
}

fn shared_key_signature(to_sign: &str) -> anyhow::Result<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut mac = Hmac::<Sha256>::new_from_slice(&engine.decode(AZURITE_KEY)?)?;
    mac.update(to_sign.as_bytes());
    Ok(engine.encode(mac.finalize().into_bytes()))
}

/// An emulator process on a loopback port, with a scratch directory for its
/// data and log; killed and cleaned up on drop.
#[derive(Debug)]
struct EmulatorProcess {
    name: &'static str,
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl EmulatorProcess {
    /// Starts the emulator on a free port and waits until it listens. The
    /// port is only free when picked: should another process bind it
    /// first, the emulator exits and is started again on a fresh one.
    async fn start(
        name: &'static str,
        binary: &Path,
        args: impl Fn(u16, &Path) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut process = Self::spawn(name, binary, &args)?;
            match process.wait_until_listening().await? {
                Listening::Yes => return Ok(process),
                Listening::PortTaken if attempts < 5 => continue,
                Listening::PortTaken => {
                    anyhow::bail!(
                        "{name}: no free port in {attempts} tries: {}",
                        process.log()
                    )
                }
            }
        }
    }

    fn spawn(
        name: &'static str,
        binary: &Path,
        args: impl FnOnce(u16, &Path) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("log"))?;
        let child = Command::new(binary)
            .args(args(port, dir.path()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(EmulatorProcess {
            name,
            child,
            port,
            dir,
        })
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until the emulator's log says it listens at its address (moto
    /// and Azurite both print it once bound). An HTTP answer would not do:
    /// on a port taken by another test's server, that server answers.
    async fn wait_until_listening(&mut self) -> anyhow::Result<Listening> {
        let address = self.base_url();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log();
            if says_listening_at(&log, &address) {
                return Ok(Listening::Yes);
            }
            if let Some(status) = self.child.try_wait()? {
                // Read again: it may have said why just before it exited.
                let log = self.log();
                if log.contains("in use") {
                    return Ok(Listening::PortTaken);
                }
                anyhow::bail!("{} exited ({status}): {log}", self.name);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} did not listen on port {} within {START_TIMEOUT:?}: {log}",
                self.name,
                self.port,
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

/// Whether `log` names `address` whole: the address, then not another
/// digit (port 4000 is not 40001).
fn says_listening_at(log: &str, address: &str) -> bool {
    log.match_indices(address).any(|(at, _)| {
        let after = log[at + address.len()..].chars().next();
        !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// How an emulator's start went.
enum Listening {
    Yes,
    /// Another process bound the port first.
    PortTaken,
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free right now: the OS picks it, the emulator binds it next.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `variable` if set, else the copy scripts/setup.sh puts under `.tools/`
/// of the checkout.
fn find_binary(variable: &str, under_tools: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        return Ok(PathBuf::from(path));
    }
    let cwd = std::env::current_dir()?;
    cwd.ancestors()
        .map(|dir| dir.join(".tools").join(under_tools))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{under_tools} not found: run scripts/setup.sh or set {variable}"))
}
