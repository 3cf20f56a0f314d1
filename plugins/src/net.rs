//! Address lists: IPv4/IPv6 addresses and CIDR ranges as written in the config, and the
//! membership test every user of them shares (`ip_restriction`, trusted proxies, cache purge).

use crate::config_error::ConfigError;
use ipnet::IpNet;
use std::net::IpAddr;

/// Parse `1.2.3.4`, `10.0.0.0/8`, `::1` or `2001:db8::/32`.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))
}

/// Parse a list of addresses/ranges, errors at `name[i]`.
pub fn parse_nets(list: &[String], name: &str, errors: &mut Vec<ConfigError>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match parse_net(s) {
            Ok(n) => out.push(n),
            Err(e) => errors.push(ConfigError::new(format!("{name}[{i}]"), e)),
        }
    }
    out
}

/// Does any of `nets` contain `ip`? IPv4-mapped IPv6 addresses count as IPv4.
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_v6_and_mapped() {
        let nets = vec![
            parse_net("10.0.0.0/8").unwrap(),
            parse_net("2001:db8::/32").unwrap(),
            parse_net("192.0.2.7").unwrap(),
        ];
        assert!(contains(&nets, "10.1.2.3".parse().unwrap()));
        assert!(contains(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(contains(&nets, "2001:db8::1".parse().unwrap()));
        assert!(contains(&nets, "192.0.2.7".parse().unwrap()));
        assert!(!contains(&nets, "192.0.2.8".parse().unwrap()));
        assert!(!contains(&nets, "2001:db9::1".parse().unwrap()));
        assert!(parse_net("10.0.0.0/33").is_err());
    }
}
