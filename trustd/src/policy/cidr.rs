//! An IPv4 or IPv6 address with a prefix length, as signed inputs write them, and the
//! rules that make every accepted form match exactly the packets it names
//! (docs/SECURITY.md, "Addresses in signed inputs").
//!
//! Text is parsed by the standard library's strict grammar (RFC 4291 §2.2 for IPv6, four
//! decimal octets without leading zeros for IPv4): no zone ids, no whitespace, no octal or
//! hex IPv4, no leading `+` or `0` in a prefix length. Then, by what the address is:
//!
//! - IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2) and prefixes inside `::ffff:0:0/96`
//!   are translated to the IPv4 address or prefix (length minus 96): Linux sends IPv4
//!   packets for a mapped address used on an IPv6 socket, so only the IPv4 form matches.
//! - IPv4-compatible (`::a.b.c.d`, deprecated by RFC 4291 §2.5.5.1), that is any address in
//!   `::/96` other than `::1`, is refused: no packet carries one.
//! - The unspecified address (`0.0.0.0`, `::`) as a single address is refused: no packet
//!   is sent to it (Linux sends a connect to it over loopback).
//! - A prefix shorter than /96 that contains `::ffff:0:0/96` or `::/96` is refused, except
//!   `::/0` (every IPv6 destination; IPv4 ones are named in IPv4 form, `0.0.0.0/0`).
//! - A prefix with host bits set (`10.1.2.3/8`) is refused: RFC 4291 §2.3 reads it as an
//!   address *and* its subnet, and a rule cannot tell which one was meant.
//! - Other embeddings (NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo `2001::/32`) are real
//!   IPv6 destinations: they match IPv6 packets, as written.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `192.0.2.0/24`, `2001:db8::/32`, or a bare address (a /32 or /128). Always in the form
/// that matches packets: IPv4-mapped input is held as IPv4, host bits are never set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// One address (a /32 or /128), as given (no translation: see [`parse_addr`]).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: max_prefix(&addr),
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this names one address (a /32 or a /128).
    pub fn is_host(&self) -> bool {
        self.prefix == max_prefix(&self.addr)
    }

    /// The first and last address as integers (IPv4 in the low 32 bits).
    pub fn range(&self) -> (u128, u128) {
        let (bits, width) = match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
            IpAddr::V6(a) => (u128::from(a), 128u32),
        };
        let host = width - u32::from(self.prefix);
        let span = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        (bits, bits | span)
    }

    /// Whether the two share at least one address (same family only).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let (a, b) = (self.range(), other.range());
        a.0 <= b.1 && b.0 <= a.1
    }
}

fn max_prefix(a: &IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// `::ffff:0:0`, the start of the IPv4-mapped range (RFC 4291 §2.5.5.2).
const MAPPED: u128 = 0xffff_0000_0000;

/// Check and translate `addr/prefix` (already split and parsed) into the form that matches
/// packets; `text` is what the input said, for the error.
fn classify(text: &str, addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
    let max = max_prefix(&addr);
    if mask(addr, prefix) != addr {
        return Err(format!(
            "{text:?} has host bits set: write the network ({}/{prefix}) or the single address ({addr})",
            mask(addr, prefix)
        ));
    }
    if prefix == max && addr.is_unspecified() {
        return Err(format!(
            "{text:?} is the unspecified address: no packet is sent to it"
        ));
    }
    let IpAddr::V6(v6) = addr else {
        return Ok(Cidr { addr, prefix });
    };
    let bits = u128::from(v6);
    if prefix >= 96 && bits >> 32 == MAPPED >> 32 {
        // Inside ::ffff:0:0/96: the IPv4 address or prefix it stands for.
        let v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
        // Translated first, then judged as the IPv4 it stands for (`::ffff:0.0.0.0` is the
        // unspecified address too).
        return classify(text, IpAddr::V4(v4), prefix - 96);
    }
    if prefix >= 96 && bits >> 32 == 0 {
        if prefix == 128 && v6 == Ipv6Addr::LOCALHOST {
            return Ok(Cidr { addr, prefix });
        }
        return Err(format!(
            "{text:?} is in ::/96, the IPv4-compatible addresses (deprecated, RFC 4291 §2.5.5.1) that no packet carries: write the IPv4 address or prefix"
        ));
    }
    if prefix > 0 && prefix < 96 {
        let c = Cidr { addr, prefix };
        let (lo, hi) = c.range();
        if lo <= MAPPED && MAPPED <= hi {
            return Err(format!(
                "{text:?} contains ::ffff:0:0/96, the IPv4-mapped addresses, which match IPv4 packets only: list the IPv6 part without it and the IPv4 part in IPv4 form"
            ));
        }
        if lo == 0 {
            return Err(format!(
                "{text:?} contains ::/96, the IPv4-compatible addresses (deprecated) that no packet carries: list the IPv6 part without it"
            ));
        }
    }
    Ok(Cidr { addr, prefix })
}

/// Parse one address (an endpoint or a resolver) by the same rules as [`Cidr`]: an
/// IPv4-mapped address gives the IPv4 address; IPv4-compatible and unspecified addresses
/// are refused. Errors are sentences naming the text.
pub fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let addr: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address"))?;
    classify(s, addr, max_prefix(&addr)).map(|c| c.addr)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or prefix"))?;
        let max = max_prefix(&addr);
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n)
                    if n <= max
                        && p.bytes().all(|b| b.is_ascii_digit())
                        && (p == "0" || !p.starts_with('0')) =>
                {
                    n
                }
                _ => return Err(format!("{s:?} has an invalid prefix length")),
            },
        };
        classify(s, addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde helper for one address field: [`parse_addr`]'s rules.
pub fn deserialize_addr<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_addr(&s).map_err(serde::de::Error::custom)
}

/// Serde helper for a list of addresses: [`parse_addr`]'s rules for each.
pub fn deserialize_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_addr(s).map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    /// Regression: the unspecified address in its mapped spellings was accepted as
    /// `0.0.0.0/32` (the check ran before the translation).
    #[test]
    fn the_unspecified_address_is_refused_in_its_mapped_forms_too() {
        for s in [
            "::ffff:0.0.0.0",
            "::ffff:0:0",
            "::ffff:0:0/128",
            "0.0.0.0",
            "::",
        ] {
            assert!(s.parse::<super::Cidr>().is_err(), "{s} is refused");
            assert!(
                super::parse_addr(s).is_err(),
                "{s} is refused as an address"
            );
        }
        assert!(
            "::ffff:0:0/96".parse::<super::Cidr>().is_ok(),
            "0.0.0.0/0 in mapped form"
        );
    }

    use super::*;

    #[test]
    fn parses_and_refuses_host_bits() {
        let c: Cidr = "10.0.0.0/8".parse().expect("valid");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        // Host bits set: an address or its subnet? Refused, not guessed.
        assert!("10.1.2.3/8".parse::<Cidr>().is_err());
        let h: Cidr = "2001:db8::1".parse().expect("valid");
        assert!(h.is_host());
        assert_eq!(h.to_string(), "2001:db8::1/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0/08".parse::<Cidr>().is_err());
        assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().is_ok());
    }
}
