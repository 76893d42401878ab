//! An IPv4 or IPv6 address with a prefix length, as signed inputs write them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `192.0.2.0/24`, `2001:db8::/32`, or a bare address (a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// One address (a /32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            prefix: max_prefix(&addr),
        }
    }

    /// The network address, with host bits cleared.
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
        Ok(Self {
            addr: mask(addr, prefix),
            prefix,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalizes() {
        let c: Cidr = "10.1.2.3/8".parse().expect("valid");
        assert_eq!(c.to_string(), "10.0.0.0/8");
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
