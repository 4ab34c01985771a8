//! A source as the per-source limits and bans count it: an IPv4 address, or the
//! IPv6 prefix (`[dist] ipv6_prefix`, a /64 by default) its address falls in. One
//! host holds a whole /64, so counting IPv6 callers by address would give a guesser
//! 2^64 fresh sources. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is IPv4.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// `[dist] ipv6_prefix` when not set.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// An address and how many of its leading bits count, the rest zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// The source `ip` counts as: its IPv4 address, or its IPv6 /`ipv6_len`.
    pub fn of(ip: IpAddr, ipv6_len: u8) -> Prefix {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Prefix::new(IpAddr::V4(v4), 32),
            IpAddr::V6(v6) => Prefix::new(IpAddr::V6(v6), ipv6_len),
        }
    }

    /// `addr` cut to `len` bits (at most the address's width).
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        match addr {
            IpAddr::V4(v4) => {
                let len = len.min(32);
                let bits = u32::from(v4) & mask32(len);
                Prefix {
                    addr: IpAddr::V4(Ipv4Addr::from(bits)),
                    len,
                }
            }
            IpAddr::V6(v6) => {
                let len = len.min(128);
                let bits = u128::from(v6) & mask128(len);
                Prefix {
                    addr: IpAddr::V6(Ipv6Addr::from(bits)),
                    len,
                }
            }
        }
    }

    /// The prefix bans fold into when the ban table is full: the IPv4 /24 or the
    /// IPv6 /48 (or this prefix, when it is already as wide).
    pub fn wider(self) -> Prefix {
        let len = match self.addr {
            IpAddr::V4(_) => 24,
            IpAddr::V6(_) => 48,
        };
        Prefix::new(self.addr, len.min(self.len))
    }

    /// Whether `ip` (IPv4-mapped IPv6 as IPv4) falls in this prefix.
    pub fn contains(self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && Prefix::new(ip, self.len) == self
    }

    /// Whether every address of `other` is in this prefix.
    pub fn covers(self, other: Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// The first address.
    pub fn addr(self) -> IpAddr {
        self.addr
    }

    /// The last address.
    pub fn last(self) -> IpAddr {
        match self.addr {
            IpAddr::V4(v4) => Ipv4Addr::from(u32::from(v4) | !mask32(self.len)).into(),
            IpAddr::V6(v6) => Ipv6Addr::from(u128::from(v6) | !mask128(self.len)).into(),
        }
    }

    /// Whether this is one whole address (an IPv4 /32 or IPv6 /128).
    pub fn is_host(self) -> bool {
        self.len == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// A whole address alone (`10.0.0.7`), a prefix with its length (`2001:db8::/64`).
impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.is_host() {
            true => write!(f, "{}", self.addr),
            false => write!(f, "{}/{}", self.addr, self.len),
        }
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why text is not an address or a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither an address nor a prefix (ADDRESS or ADDRESS/LENGTH)")]
pub struct PrefixError(String);

/// `ADDRESS` (one address) or `ADDRESS/LENGTH`; the bits past the length are dropped.
impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Prefix, PrefixError> {
        let bad = || PrefixError(s.chars().take(64).collect());
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let width = if addr.is_ipv4() { 32 } else { 128 };
        match len {
            Some(len) if len > width => Err(bad()),
            Some(len) => Ok(Prefix::new(addr, len)),
            None => Ok(Prefix::new(addr, width)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_callers_count_by_prefix_and_ipv4_by_address() {
        let a = Prefix::of(ip("2001:db8:1:2:aaaa::1"), 64);
        let b = Prefix::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), 64);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_ne!(a, Prefix::of(ip("2001:db8:1:3::1"), 64));
        assert_eq!(
            Prefix::of(ip("2001:db8::1"), 128).to_string(),
            "2001:db8::1"
        );
        let v4 = Prefix::of(ip("10.1.2.3"), 64);
        assert_eq!(v4.to_string(), "10.1.2.3");
        assert_ne!(v4, Prefix::of(ip("10.1.2.4"), 64));
        assert_eq!(Prefix::of(ip("::ffff:10.1.2.3"), 64), v4, "mapped is IPv4");
    }

    #[test]
    fn wider_prefixes_hold_the_narrow_ones() {
        let v4 = Prefix::of(ip("10.1.2.3"), 64).wider();
        assert_eq!(v4.to_string(), "10.1.2.0/24");
        assert!(v4.contains(ip("10.1.2.200")) && !v4.contains(ip("10.1.3.1")));
        assert!(v4.contains(ip("::ffff:10.1.2.9")));
        assert_eq!(v4.last(), ip("10.1.2.255"));
        let v6 = Prefix::of(ip("2001:db8:1:2::1"), 64).wider();
        assert_eq!(v6.to_string(), "2001:db8:1::/48");
        assert!(v6.covers(Prefix::of(ip("2001:db8:1:ff::1"), 64)));
        assert!(!v6.covers(Prefix::of(ip("2001:db8:2::1"), 64)));
        assert_eq!(v6.last(), ip("2001:db8:1:ffff:ffff:ffff:ffff:ffff"));
        assert_eq!(
            Prefix::of(ip("2001:db8::1"), 32).wider().to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn text_is_an_address_or_a_prefix() {
        assert_eq!(
            "10.0.0.7".parse::<Prefix>().unwrap().to_string(),
            "10.0.0.7"
        );
        assert_eq!(
            "10.0.0.7/24".parse::<Prefix>().unwrap().to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(
            "2001:db8::5/64".parse::<Prefix>().unwrap().to_string(),
            "2001:db8::/64"
        );
        assert_eq!(
            "::ffff:10.0.0.7".parse::<Prefix>().unwrap().to_string(),
            "10.0.0.7"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Prefix>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        for bad in ["", "10.0.0.7/33", "::/129", "x", "10.0.0.7/", "10.0.0.7/-1"] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
    }
}
