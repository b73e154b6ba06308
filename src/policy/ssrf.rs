//! SSRF policy for `http.request`: where an outgoing request may connect.
//!
//! Three checks, all ending in `2003 PERMISSION_DENIED`:
//! - **Allow-list** (`--http-allow-hosts`): when non-empty, only those hosts (exact,
//!   case-insensitive, a trailing dot ignored) may be named in a URL at all.
//! - **IP literal** in the URL (`http://169.254.169.254/`, `http://[::ffff:a9fe:a9fe]/`):
//!   checked against `--http-deny-cidrs` before anything is sent. This check is needed
//!   because hyper-util's connector never calls the resolver for an IP literal. An IPv6
//!   literal with a zone (`[fe80::1%25eth0]`, RFC 6874) is refused too: a zone names a
//!   link-local scope.
//! - **DNS answers** ([`SsrfResolver`], the connector's resolver): every address inside a
//!   denied CIDR is dropped; a name left with no address fails. The check applies to the
//!   address that is then connected to, so a name cannot resolve to a denied address
//!   between check and use (no DNS rebinding window).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), and the deprecated IPv4-compatible ones
//! (`::a.b.c.d`), are checked as the IPv4 address they name as well. The unspecified addresses (`0.0.0.0`, `::`) are always denied: the
//! kernel routes a connect to them to the local host, which would step around a denied
//! loopback range. Loopback itself is allowed unless a CIDR denies it (tests and
//! sidecars use it).

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;

use crate::config::Config;

/// Where `http.request` may go; built once from the configuration and shared.
#[derive(Debug, Clone, Default)]
pub struct SsrfPolicy {
    deny: Vec<IpNet>,
    /// Normalised (lower case, no trailing dot); empty: any host not denied.
    allow_hosts: Vec<String>,
}

/// A request the policy refuses (→ 2003); the message names the host and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDenied {
    pub host: String,
    pub reason: String,
}

impl fmt::Display for PolicyDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host `{}` is not allowed: {}", self.host, self.reason)
    }
}

impl std::error::Error for PolicyDenied {}

/// `[::1]` → `::1`, `Example.COM.` → `example.com`.
pub fn normalize_host(host: &str) -> String {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

impl SsrfPolicy {
    pub fn new(deny: Vec<IpNet>, allow_hosts: Vec<String>) -> Self {
        SsrfPolicy {
            deny,
            allow_hosts: allow_hosts
                .iter()
                .map(|h| normalize_host(h.trim()))
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    pub fn from_config(config: &Config) -> Self {
        SsrfPolicy::new(
            config.http_deny_cidrs.clone(),
            config.http_allow_hosts.clone(),
        )
    }

    /// Why `ip` may not be reached, or `None` when it may.
    pub fn denied_reason(&self, ip: IpAddr) -> Option<String> {
        if ip.is_unspecified() {
            return Some(format!("{ip} is the unspecified address"));
        }
        let mapped = match ip {
            // IPv4-compatible (`::a.b.c.d`, deprecated) too, other than `::1` and `::`.
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .or_else(|| (!v6.is_loopback()).then(|| v6.to_ipv4()).flatten())
                .map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        if mapped.is_some_and(|m| m.is_unspecified()) {
            return Some(format!("{ip} is the unspecified address"));
        }
        self.deny
            .iter()
            .find(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
            .map(|net| format!("{ip} is inside denied range {net}"))
    }

    /// The checks that need no DNS: the allow-list, and the deny list when `host` (as a
    /// URI gives it, brackets allowed) is an IP literal.
    pub fn check_host(&self, host: &str) -> Result<(), PolicyDenied> {
        let name = normalize_host(host);
        let deny = |reason: String| PolicyDenied {
            host: name.clone(),
            reason,
        };
        if !self.allow_hosts.is_empty() && !self.allow_hosts.contains(&name) {
            return Err(deny("not in the allowed hosts list".to_owned()));
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            if let Some(reason) = self.denied_reason(ip) {
                return Err(deny(reason));
            }
        }
        // `[fe80::1%25eth0]` (RFC 6874): no resolver reads it, so it failed as a DNS name
        // (3001, retried). A zone names a link-local scope, a host's own network segment:
        // refused, with the reason of the address when that is denied too.
        if let Some((address, _zone)) = name.split_once('%') {
            if host.starts_with('[') {
                let reason = address
                    .parse::<IpAddr>()
                    .ok()
                    .and_then(|ip| self.denied_reason(ip))
                    .unwrap_or_else(|| {
                        "an IPv6 zone identifier names a link-local scope".to_owned()
                    });
                return Err(deny(reason));
            }
        }
        Ok(())
    }

    /// Keeps the addresses `host` may connect to; fails when none is left.
    pub fn filter_addrs(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, PolicyDenied> {
        let mut kept = Vec::new();
        let mut first_denied = None;
        for addr in addrs {
            match self.denied_reason(addr.ip()) {
                None => kept.push(addr),
                Some(reason) => {
                    first_denied.get_or_insert(reason);
                }
            }
        }
        match first_denied {
            Some(reason) if kept.is_empty() => Err(PolicyDenied {
                host: normalize_host(host),
                reason: format!("it resolves only to denied addresses ({reason})"),
            }),
            _ => Ok(kept),
        }
    }
}

/// Why [`SsrfResolver`] gave no address.
#[derive(Debug)]
pub enum ResolveError {
    /// Every answer was denied by the policy (→ 2003).
    Denied(PolicyDenied),
    /// The lookup itself failed or found nothing (→ 3001).
    Lookup {
        host: String,
        source: std::io::Error,
    },
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Denied(d) => d.fmt(f),
            ResolveError::Lookup { host, source } => {
                write!(f, "DNS lookup of `{host}` failed: {source}")
            }
        }
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResolveError::Denied(d) => Some(d),
            ResolveError::Lookup { source, .. } => Some(source),
        }
    }
}

/// The resolver of `http.request`'s connector: the system resolver
/// (`tokio::net::lookup_host`) with the policy's deny list applied to its answers.
#[derive(Debug, Clone)]
pub struct SsrfResolver {
    policy: Arc<SsrfPolicy>,
}

impl SsrfResolver {
    pub fn new(policy: Arc<SsrfPolicy>) -> Self {
        SsrfResolver { policy }
    }

    /// Resolves `host` and applies the policy (the port of the answers is 0; the
    /// connector sets the URL's).
    pub async fn resolve(
        policy: &SsrfPolicy,
        host: &str,
    ) -> Result<std::vec::IntoIter<SocketAddr>, ResolveError> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|source| ResolveError::Lookup {
                host: host.to_owned(),
                source,
            })?
            .collect();
        if found.is_empty() {
            return Err(ResolveError::Lookup {
                host: host.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"),
            });
        }
        policy
            .filter_addrs(host, found)
            .map(Vec::into_iter)
            .map_err(ResolveError::Denied)
    }
}

impl tower_service::Service<Name> for SsrfResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move { SsrfResolver::resolve(&policy, name.as_str()).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| s.parse().expect("valid CIDR"))
            .collect()
    }

    fn default_policy() -> SsrfPolicy {
        let deny = crate::config::DEFAULT_DENY_CIDRS
            .split(',')
            .map(|s| s.parse().expect("valid CIDR"))
            .collect();
        SsrfPolicy::new(deny, Vec::new())
    }

    #[test]
    fn metadata_and_link_local_literals_are_denied_by_default() {
        let p = default_policy();
        for host in [
            "169.254.169.254",
            "169.254.0.1",
            "[fe80::1]",
            "[fd00:ec2::254]",
            "100.100.100.200",
            "[::ffff:169.254.169.254]",
            "[::ffff:a9fe:a9fe]",
            "[::169.254.169.254]",
            "[::a9fe:a9fe]",
            "0.0.0.0",
            "[::]",
            "[::ffff:0.0.0.0]",
        ] {
            let err = p.check_host(host).expect_err(host);
            assert!(err.to_string().contains("not allowed"), "{err}");
        }
        let err = p.check_host("169.254.169.254").expect_err("denied");
        assert_eq!(err.host, "169.254.169.254");
        assert!(err.reason.contains("169.254.0.0/16"), "{}", err.reason);
    }

    #[test]
    fn ipv6_literals_with_a_zone_are_denied() {
        let p = default_policy();
        let err = p.check_host("[fe80::1%25eth0]").expect_err("zoned");
        assert!(err.reason.contains("fe80::/10"), "{}", err.reason);
        for host in ["[2001:db8::1%25eth0]", "[2001:db8::1%eth0]", "[::1%251]"] {
            let err = p.check_host(host).expect_err(host);
            assert!(err.reason.contains("zone identifier"), "{}", err.reason);
        }
    }

    #[test]
    fn loopback_names_and_public_literals_are_allowed_by_default() {
        let p = default_policy();
        for host in [
            "127.0.0.1",
            "[::1]",
            "localhost",
            "example.com",
            "8.8.8.8",
            "[2001:db8::1]",
        ] {
            p.check_host(host).expect(host);
        }
    }

    #[test]
    fn allow_list_is_exact_and_case_insensitive() {
        let p = SsrfPolicy::new(
            Vec::new(),
            vec!["API.example.com".into(), "127.0.0.1".into()],
        );
        p.check_host("api.example.com").expect("listed");
        p.check_host("Api.Example.Com.")
            .expect("listed, any case, trailing dot");
        p.check_host("127.0.0.1").expect("listed literal");
        for host in [
            "example.com",
            "evil-api.example.com",
            "api.example.com.evil",
            "localhost",
        ] {
            let err = p.check_host(host).expect_err(host);
            assert!(err.reason.contains("allowed hosts"), "{err}");
        }
    }

    #[test]
    fn answers_in_denied_ranges_are_dropped() {
        let p = SsrfPolicy::new(nets(&["10.0.0.0/8", "::1/128"]), Vec::new());
        let a = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        let kept = p
            .filter_addrs(
                "mixed",
                [a("10.1.2.3:0"), a("93.184.216.34:0"), a("[::1]:0")],
            )
            .expect("one address left");
        assert_eq!(kept, vec![a("93.184.216.34:0")]);
        let err = p
            .filter_addrs(
                "Internal.Example",
                [a("10.1.2.3:0"), a("[::ffff:10.9.9.9]:0")],
            )
            .expect_err("all denied");
        assert_eq!(err.host, "internal.example");
        assert!(err.reason.contains("10.0.0.0/8"), "{}", err.reason);
    }

    /// System lookups are bounded so that a slow resolver fails the test, not hangs it.
    async fn lookup(
        policy: &SsrfPolicy,
        host: &str,
    ) -> Result<std::vec::IntoIter<SocketAddr>, ResolveError> {
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            SsrfResolver::resolve(policy, host),
        )
        .await
        .expect("lookup finished in time")
    }

    #[tokio::test]
    async fn resolver_denies_a_name_that_resolves_into_a_denied_range() {
        let p = SsrfPolicy::new(nets(&["127.0.0.0/8", "::1/128"]), Vec::new());
        match lookup(&p, "localhost").await {
            Err(ResolveError::Denied(d)) => assert_eq!(d.host, "localhost"),
            other => panic!("expected a denial, got {other:?}"),
        }
        let open = SsrfPolicy::default();
        let addrs: Vec<_> = lookup(&open, "localhost")
            .await
            .expect("localhost resolves")
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn resolver_reports_lookup_failures_apart_from_denials() {
        let p = SsrfPolicy::default();
        match lookup(&p, "no-such-host.invalid").await {
            Err(ResolveError::Lookup { host, .. }) => assert_eq!(host, "no-such-host.invalid"),
            other => panic!("expected a lookup failure, got {other:?}"),
        }
    }
}
