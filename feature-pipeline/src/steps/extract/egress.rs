//! Which addresses the crawler may reach: the public internet, not the machine it runs on nor
//! its network.
//!
//! A crawled page links wherever its author likes: to `http://127.0.0.1:5432`, to the cloud's
//! metadata service at `169.254.169.254`, to a name whose DNS answer is `10.0.0.7`. Followed
//! blindly, such links turn the pipeline into a proxy into the operator's private network (SSRF),
//! and what comes back is stored as a document. So every address is checked where the request is
//! really made:
//! - names, by [`GuardedResolver`], the HTTP client's resolver: it resolves once and hands the client
//!   only allowed addresses, so a name cannot pass the check with one address and connect to
//!   another (DNS rebinding);
//! - IP literals, which no resolver sees, by [`Egress::check_url`], called for the first URL and for
//!   every redirect hop.
//!
//! `--allow-private-hosts` (`ENGRAM_CRAWL_ALLOW_PRIVATE=true`) opens private networks on purpose,
//! for an intranet wiki. Through an HTTP proxy, names are resolved by the proxy, so the proxy must
//! enforce its own egress rules; literals are still checked here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// The crawler's address policy.
#[derive(Debug, Clone, Default)]
pub struct Egress {
    /// Private, loopback and link-local addresses are allowed too.
    pub allow_private: bool,
    /// Addresses allowed whatever their kind (tests serve pages on loopback and still check the rest).
    pub exempt: Vec<IpAddr>,
}

/// A refused address, as the crawl report states it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{host} is {address}, a {kind} address: the crawler reaches only public addresses (pass --allow-private-hosts or set ENGRAM_CRAWL_ALLOW_PRIVATE=true to crawl a private network on purpose)"
)]
pub struct Refused {
    /// The host as the URL named it.
    pub host: String,
    /// The address it is, or resolved to.
    pub address: IpAddr,
    /// What kind of address that is.
    pub kind: &'static str,
}

/// What kind of non-public address `ip` is, if it is one.
pub fn private_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => {
            // ::ffff:a.b.c.d and the deprecated ::a.b.c.d reach the IPv4 address they embed.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_kind(v4);
            }
            let segments = v6.segments();
            if segments[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return v4_kind(Ipv4Addr::new(
                    (segments[6] >> 8) as u8,
                    segments[6] as u8,
                    (segments[7] >> 8) as u8,
                    segments[7] as u8,
                ));
            }
            v6_kind(v6)
        }
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private (RFC 1918)"
    } else if ip.is_link_local() {
        "link-local (cloud metadata)"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified (this host)"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.is_multicast() {
        "multicast"
    } else if a == 100 && (b & 0xc0) == 64 {
        "shared (carrier-grade NAT, RFC 6598)"
    } else if a >= 240 {
        "reserved"
    } else {
        return None;
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified (this host)"
    } else if ip.is_multicast() {
        "multicast"
    } else if (first & 0xfe00) == 0xfc00 {
        "private (unique local, fc00::/7)"
    } else if (first & 0xffc0) == 0xfe80 {
        "link-local (fe80::/10)"
    } else if (first & 0xffc0) == 0xfec0 {
        "private (site-local, fec0::/10)"
    } else {
        return None;
    })
}

impl Egress {
    /// Whether a request may go to `address` (named `host` in the URL).
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        if self.allow_private || self.exempt.contains(&address) {
            return Ok(());
        }
        match private_kind(address) {
            Some(kind) => Err(Refused {
                host: host.to_string(),
                address,
                kind,
            }),
            None => Ok(()),
        }
    }

    /// Checks a URL whose host is an IP literal (a name is checked when it is resolved).
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        let address = match url.host() {
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(Host::Domain(_)) | None => return Ok(()),
        };
        self.check(url.host_str().unwrap_or_default(), address)
    }
}

/// The crawler's DNS resolver: the system's answer, less the addresses [`Egress`] refuses.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    /// The policy.
    pub egress: Egress,
    /// A host resolved without the check: the operator's own proxy.
    pub trusted: Option<String>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let egress = self.egress.clone();
        let trusted = self.trusted.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(&host));
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if trusted {
                return Ok(Box::new(found.into_iter()) as Addrs);
            }
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match egress.check(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(why)) => Err(Box::new(why) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The [`Refused`] somewhere in an error's chain, if any.
pub fn refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(address: &str) -> Option<&'static str> {
        private_kind(address.parse().unwrap())
    }

    #[test]
    fn private_loopback_link_local_and_special_addresses_are_named() {
        for (address, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private (RFC 1918)"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("0.0.0.0", "unspecified (this host)"),
            ("0.1.2.3", "unspecified (this host)"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("100.64.0.1", "shared (carrier-grade NAT, RFC 6598)"),
            ("::1", "loopback"),
            ("::", "unspecified (this host)"),
            ("fd00::1", "private (unique local, fc00::/7)"),
            ("fe80::1", "link-local (fe80::/10)"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("::10.0.0.1", "private (RFC 1918)"),
        ] {
            assert_eq!(kind(address), Some(expected), "{address}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_however_they_are_spelled() {
        let egress = Egress::default();
        for url in [
            "http://127.0.0.1:8080/",
            "http://0x7f.1/",
            "http://2130706433/",
            "http://[::1]/",
            "http://[::ffff:a9fe:a9fe]/latest/meta-data",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let err = egress.check_url(&Url::parse(url).unwrap()).unwrap_err();
            assert!(err.to_string().contains("--allow-private-hosts"), "{url}: {err}");
        }
        assert!(egress.check_url(&Url::parse("http://example.com/").unwrap()).is_ok());
        let open = Egress {
            allow_private: true,
            exempt: Vec::new(),
        };
        assert!(open.check_url(&Url::parse("http://10.0.0.1/").unwrap()).is_ok());
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_unless_trusted() {
        let resolver = GuardedResolver {
            egress: Egress::default(),
            trusted: None,
        };
        let err = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        let refused = refusal(err.as_ref()).expect("a refusal");
        assert_eq!(refused.kind, "loopback");
        let trusted = GuardedResolver {
            egress: Egress::default(),
            trusted: Some("LOCALHOST".into()),
        };
        assert!(trusted.resolve("localhost".parse().unwrap()).await.is_ok());
    }
}
