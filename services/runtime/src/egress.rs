//! The SSRF guard: which addresses a reelmesh service may reach when a
//! client hands it a URL (an input to fetch, a webhook to call).
//!
//! A URL from a tenant must not become a way into the operator's network:
//! loopback, private, link-local (where cloud metadata services live) and
//! other non-public addresses are refused unless the config allowlists them.
//! The check runs on the addresses a name actually resolves to, inside the
//! HTTP client's resolver, so a public-looking name that resolves to
//! 127.0.0.1 is caught, and so is every redirect hop.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::{Deserialize, Serialize};
use url::Url;

/// How many redirects a fetch follows before giving up.
const MAX_REDIRECTS: usize = 5;

/// Config: what is reachable beyond the public internet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EgressConfig {
    /// Addresses (`10.1.2.3`), networks (`10.0.0.0/8`) or host names
    /// (`minio.internal`) that may be reached even though they are not
    /// public. Empty by default: only public addresses.
    pub allow: Vec<String>,
}

/// Why a URL may not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressRefused {
    #[error("only http and https URLs can be fetched, not {0}:")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error(
        "{host} is {kind} address {ip}, which is not allowed (allowlist it in the egress config)"
    )]
    Address {
        host: String,
        ip: IpAddr,
        kind: &'static str,
    },
    #[error("{host} resolves to no address")]
    Unresolved { host: String },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
}

/// A bad `allow` entry in the config.
#[derive(Debug, thiserror::Error)]
#[error("egress allow entry {entry:?} is not an address, a network or a host name")]
pub struct BadAllowEntry {
    pub entry: String,
}

/// The checked form of [`EgressConfig`].
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    networks: Vec<IpNet>,
    hosts: Vec<String>,
}

impl EgressPolicy {
    pub fn new(config: &EgressConfig) -> Result<Self, BadAllowEntry> {
        let mut policy = EgressPolicy::default();
        for entry in &config.allow {
            let entry = entry.trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                policy.networks.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                policy.networks.push(IpNet::from(ip));
            } else if is_host_name(entry) {
                policy.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(BadAllowEntry {
                    entry: entry.into(),
                });
            }
        }
        Ok(policy)
    }

    /// Checks what can be known before connecting: the scheme, and the
    /// host when it is a literal address.
    pub fn check_url(&self, url: &Url) -> Result<(), EgressRefused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressRefused::Scheme(url.scheme().into()));
        }
        match url.host() {
            None => Err(EgressRefused::NoHost),
            Some(url::Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), ip.into()),
            Some(url::Host::Ipv6(ip)) => self.check_ip(&ip.to_string(), ip.into()),
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }

    /// Checks one address `host` resolved to.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), EgressRefused> {
        let Some(kind) = non_public_kind(ip) else {
            return Ok(());
        };
        if self
            .hosts
            .iter()
            .any(|allowed| host.eq_ignore_ascii_case(allowed))
            || self.networks.iter().any(|net| net.contains(&ip))
        {
            return Ok(());
        }
        Err(EgressRefused::Address {
            host: host.into(),
            ip,
            kind,
        })
    }

    /// An HTTP client bound by this policy: names resolve through the
    /// guard, redirects are re-checked, and proxies from the environment
    /// are ignored (a proxy would resolve names where we cannot check them).
    pub fn http_client(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let policy = Arc::new(self.clone());
        let redirects = policy.clone();
        builder
            .no_proxy()
            .dns_resolver(GuardedResolver { policy })
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(EgressRefused::TooManyRedirects);
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            }))
    }
}

/// Finds the guard's refusal inside an error from a guarded client, so the
/// caller can report it instead of reqwest's generic "error sending request".
pub fn refusal_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressRefused> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(refused) = err.downcast_ref::<EgressRefused>() {
            return Some(refused);
        }
        next = err.source();
    }
    None
}

/// Resolves through the system resolver, then refuses the name if any
/// address it got is not allowed. All of them, not just the first: the
/// client may try each in turn.
struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl fmt::Debug for GuardedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedResolver").finish_non_exhaustive()
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(EgressRefused::Unresolved { host }.into());
            }
            for addr in &addrs {
                policy.check_ip(&host, addr.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// What kind of non-public address `ip` is, or `None` for a public one.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_kind(v4),
            None => v6_kind(v6),
        },
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "a loopback"
    } else if ip.is_private() {
        "a private"
    } else if ip.is_link_local() {
        "a link-local (cloud metadata)"
    } else if a == 0 {
        "an unspecified"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (carrier-grade NAT)"
    } else if a == 198 && (b == 18 || b == 19) {
        "a benchmarking"
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        "a multicast or reserved"
    } else {
        return None;
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "a loopback"
    } else if ip.is_unspecified() {
        "an unspecified"
    } else if first & 0xfe00 == 0xfc00 {
        "a private (unique local)"
    } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
        "a link-local"
    } else if ip.is_multicast() {
        "a multicast"
    } else {
        return None;
    })
}

/// The IPv4 address inside IPv4-mapped, IPv4-compatible, NAT64 and 6to4
/// addresses, which reach that IPv4 host and must be judged as it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        Some(mapped)
    } else if (s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified())
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        Some(tail)
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    }
}

fn is_host_name(entry: &str) -> bool {
    !entry.is_empty()
        && entry.len() <= 253
        && entry.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> EgressPolicy {
        EgressPolicy::new(&EgressConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
        })
        .expect("valid allowlist")
    }

    fn refused(policy: &EgressPolicy, url: &str) -> bool {
        policy.check_url(&Url::parse(url).expect("url")).is_err()
    }

    #[test]
    fn non_public_addresses_are_refused() {
        let guard = policy(&[]);
        for url in [
            "http://127.0.0.1/a.mp4",
            "http://127.8.9.10/",
            "http://10.0.0.1/",
            "http://172.16.4.4/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.100.100.200/",
            "http://0.0.0.0:8080/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:a00:1::]/",
            "http://255.255.255.255/",
        ] {
            assert!(refused(&guard, url), "{url} should be refused");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_url_check() {
        let guard = policy(&[]);
        for url in [
            "https://93.184.215.14/v.mp4",
            "http://[2606:4700::1111]/",
            "http://[::ffff:8.8.8.8]/",
            "https://media.example.com/clip.mp4",
        ] {
            assert!(!refused(&guard, url), "{url} should pass");
        }
    }

    #[test]
    fn only_http_and_https_are_fetched() {
        let guard = policy(&[]);
        for url in ["file:///etc/passwd", "ftp://example.com/a", "gopher://x/"] {
            assert!(matches!(
                guard.check_url(&Url::parse(url).expect("url")),
                Err(EgressRefused::Scheme(_))
            ));
        }
    }

    #[test]
    fn the_allowlist_opens_addresses_networks_and_names() {
        let guard = policy(&["127.0.0.1", "10.0.0.0/8", "MinIO.internal"]);
        assert!(!refused(&guard, "http://127.0.0.1:9000/"));
        assert!(!refused(&guard, "http://10.200.3.4/"));
        assert!(refused(&guard, "http://192.168.0.1/"));
        let ip = IpAddr::from([172, 16, 0, 9]);
        assert!(guard.check_ip("minio.internal", ip).is_ok());
        assert!(guard.check_ip("other.internal", ip).is_err());
    }

    #[test]
    fn refusals_name_the_host_and_address() {
        let err = policy(&[])
            .check_ip("sneaky.example", IpAddr::from([127, 0, 0, 1]))
            .expect_err("loopback");
        let text = err.to_string();
        assert!(
            text.contains("sneaky.example") && text.contains("127.0.0.1"),
            "{text}"
        );
        assert!(text.contains("loopback"), "{text}");
    }

    #[test]
    fn bad_allow_entries_are_config_errors() {
        for entry in ["10.0.0.0/40", "http://x", "a b", ""] {
            let config = EgressConfig {
                allow: vec![entry.into()],
            };
            assert!(EgressPolicy::new(&config).is_err(), "{entry:?}");
        }
    }
}
