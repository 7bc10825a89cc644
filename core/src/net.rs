//! Addresses: CIDR ranges (`--trusted-proxies`), the unit per-IP limits count in, and the client
//! address a trusted proxy reports in `X-Forwarded-For` or `Forwarded`.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An address range: an address and a prefix length (`10.0.0.0/8`, `2001:db8::/32`; a bare
/// address is a range of one). IPv4-mapped IPv6 addresses match as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = prefix_mask_32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = prefix_mask_128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn prefix_mask_32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn prefix_mask_128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The unit per-IP limits count in: an IPv4 address (IPv4-mapped IPv6 counts as IPv4), or an IPv6
/// /64 — a single host usually controls a whole /64, so counting its addresses separately would
/// make every per-IP limit (and its memory bound) trivially bypassable.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// The client's address for limits and logs. Only when `peer` (the TCP peer) is one of `trusted`
/// are the forwarding headers read: `X-Forwarded-For` when the request has one, else `Forwarded`
/// (RFC 7239, its `for=` parameters). The list is walked from the right (the entry the nearest
/// proxy wrote) past every trusted address; the first address not trusted is the client. An entry
/// that is not an address (`unknown`, an obfuscated name) ends the walk at the trusted hop that
/// wrote it; a list of trusted addresses only gives its left-most one. From an untrusted peer the
/// headers are ignored: anyone can write them.
pub fn client_address(
    peer: IpAddr,
    trusted: &[IpNet],
    x_forwarded_for: &[String],
    forwarded: &[String],
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let entries: Vec<Option<IpAddr>> = if !x_forwarded_for.is_empty() {
        x_forwarded_for
            .iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(parse_node)
            .collect()
    } else {
        forwarded
            .iter()
            .flat_map(|value| value.split(','))
            .filter_map(forwarded_for)
            .map(parse_node)
            .collect()
    };
    let mut client = peer;
    for entry in entries.iter().rev() {
        match entry {
            None => return client,
            Some(ip) => {
                client = ip.to_canonical();
                if !is_trusted(client) {
                    return client;
                }
            }
        }
    }
    client
}

/// The `for=` parameter of one `Forwarded` element, unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("a test address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|net| net.parse().expect("a test range"))
            .collect()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ranges_parse_and_match() {
        let net: IpNet = "10.0.0.0/8".parse().expect("range");
        assert!(net.contains(ip("10.255.0.1")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("11.0.0.1")));
        let one: IpNet = "192.0.2.7".parse().expect("address");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: IpNet = "2001:db8::/32".parse().expect("range");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all: IpNet = "0.0.0.0/0".parse().expect("range");
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::1")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("proxy.local".parse::<IpNet>().is_err());
        assert!("10.0.0.0/x".parse::<IpNet>().is_err());
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let trusted = nets(&["10.0.0.0/8"]);
        let xff = strings(&["198.51.100.9"]);
        assert_eq!(
            client_address(ip("203.0.113.5"), &trusted, &xff, &[]),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &[], &xff, &[]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        // The client forged the left-most entry; the proxies appended the rest.
        let xff = strings(&["1.2.3.4, 198.51.100.9", "10.0.0.2"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &trusted, &xff, &[]),
            ip("198.51.100.9")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.1"), &trusted, &[], &[]),
            ip("10.0.0.1")
        );
        // Every entry trusted: the left-most.
        let xff = strings(&["10.9.9.9, 10.0.0.2"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &trusted, &xff, &[]),
            ip("10.9.9.9")
        );
        // Ports and brackets.
        let xff = strings(&["[2001:db9::5]:443, 198.51.100.1:80"]);
        assert_eq!(
            client_address(ip("::ffff:10.0.0.1"), &trusted, &xff, &[]),
            ip("198.51.100.1")
        );
        // Garbage written by a trusted hop ends the walk at that hop.
        let xff = strings(&["198.51.100.1, unknown"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &trusted, &xff, &[]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trusted = nets(&["10.0.0.0/8"]);
        let forwarded = strings(&[
            "for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[2001:db8:cafe::17]:4711\"",
            "For=10.0.0.3",
        ]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &trusted, &[], &forwarded),
            ip("2001:db8:cafe::17")
        );
        let forwarded = strings(&["for=unknown"]);
        assert_eq!(
            client_address(ip("10.0.0.1"), &trusted, &[], &forwarded),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn limit_keys_group_ipv6_by_64() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(limit_key(ip("::ffff:192.0.2.9")), ip("192.0.2.9"));
    }
}
