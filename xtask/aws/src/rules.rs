//! Security-group ingress rules as plain data: which of them reach a TCP port,
//! and which rules keep everything else a rule allows once that port is cut out.
//!
//! A rule here has exactly one source (the EC2 API groups several sources in one
//! `IpPermission`; `ec2.rs` flattens them), so each source is changed on its own.

use std::fmt;

pub const SSH_PORT: u16 = 22;
const HIGHEST_PORT: i32 = 65535;

/// Where a rule lets traffic come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Ipv4(String),
    Ipv6(String),
    PrefixList(String),
    Group {
        id: String,
        /// The account owning the group, as EC2 reports it.
        user_id: Option<String>,
    },
}

impl Source {
    fn may_be_ipv4(&self) -> bool {
        !matches!(self, Source::Ipv6(_))
    }

    fn may_be_ipv6(&self) -> bool {
        !matches!(self, Source::Ipv4(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ipv4(cidr) | Source::Ipv6(cidr) => f.write_str(cidr),
            Source::PrefixList(id) => write!(f, "prefix list {id}"),
            Source::Group { id, .. } => write!(f, "security group {id}"),
        }
    }
}

/// The protocols EC2 rules distinguish; ports only mean something for TCP and UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Another IP protocol number (GRE, ESP, ...): all of its traffic, no ports.
    Other,
}

impl Protocol {
    /// Classifies the `IpProtocol` string of the EC2 API, by name or by number.
    fn parse(ip_protocol: &str) -> Protocol {
        match ip_protocol.to_ascii_lowercase().as_str() {
            "-1" | "all" => Protocol::All,
            "tcp" | "6" => Protocol::Tcp,
            "udp" | "17" => Protocol::Udp,
            "icmp" | "1" => Protocol::Icmp,
            "icmpv6" | "58" => Protocol::Icmpv6,
            _ => Protocol::Other,
        }
    }
}

/// One ingress rule with one source, as the EC2 API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRule {
    /// `IpProtocol` as the API spelled it, so a revoke names exactly this rule.
    pub protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub source: Source,
    pub description: Option<String>,
}

/// What replaces a rule once a port is cut out of it.
pub struct Replacement {
    /// Rules for the same source allowing everything else the rule allowed.
    pub rules: Vec<IngressRule>,
    /// Access no rule can keep, said in words.
    pub lost: Option<String>,
}

impl IngressRule {
    fn kind(&self) -> Protocol {
        Protocol::parse(&self.protocol)
    }

    /// The TCP or UDP ports the rule opens; a missing or -1 bound means all ports.
    fn port_range(&self) -> (i32, i32) {
        let from = self.from_port.filter(|port| *port >= 0).unwrap_or(0);
        let to = self
            .to_port
            .filter(|port| *port >= 0)
            .unwrap_or(HIGHEST_PORT);
        (from, to)
    }

    /// Whether the rule lets traffic reach TCP `port`.
    pub fn reaches_tcp_port(&self, port: u16) -> bool {
        match self.kind() {
            Protocol::All => true,
            Protocol::Tcp => {
                let (from, to) = self.port_range();
                (from..=to).contains(&i32::from(port))
            }
            Protocol::Udp | Protocol::Icmp | Protocol::Icmpv6 | Protocol::Other => false,
        }
    }

    /// The same rule for another protocol and ports, same source and description.
    fn with(&self, protocol: &str, from_port: i32, to_port: i32) -> IngressRule {
        IngressRule {
            protocol: protocol.to_owned(),
            from_port: Some(from_port),
            to_port: Some(to_port),
            source: self.source.clone(),
            description: self.description.clone(),
        }
    }

    /// Rules for the same source allowing what this rule allows except TCP `port`.
    /// A security group cannot say "every protocol but TCP", so an all-traffic
    /// rule keeps TCP, UDP and ICMP (v4 and/or v6, as the source can be) only.
    pub fn without_tcp_port(&self, port: u16) -> Replacement {
        let tcp = |from, to| {
            tcp_ranges_without(from, to, port).map(move |(from, to)| self.with("tcp", from, to))
        };
        match self.kind() {
            Protocol::Tcp => {
                let (from, to) = self.port_range();
                Replacement {
                    rules: tcp(from, to).collect(),
                    lost: None,
                }
            }
            Protocol::All => {
                let mut rules: Vec<IngressRule> = tcp(0, HIGHEST_PORT).collect();
                rules.push(self.with("udp", 0, HIGHEST_PORT));
                // "All ICMP types and codes" is written -1/-1.
                if self.source.may_be_ipv4() {
                    rules.push(self.with("icmp", -1, -1));
                }
                if self.source.may_be_ipv6() {
                    rules.push(self.with("icmpv6", -1, -1));
                }
                Replacement {
                    rules,
                    lost: Some(format!(
                        "{self} becomes TCP (all ports but {port}), UDP and ICMP: other IP \
                         protocols (GRE, ESP, SCTP, ...) from {} are no longer allowed; \
                         add rules for those you need",
                        self.source
                    )),
                }
            }
            Protocol::Udp | Protocol::Icmp | Protocol::Icmpv6 | Protocol::Other => Replacement {
                rules: vec![self.clone()],
                lost: None,
            },
        }
    }

    /// Same protocol, ports and source: EC2 holds such a rule once, whatever
    /// its description or the protocol's spelling.
    pub fn same_permission(&self, other: &IngressRule) -> bool {
        let ports = |rule: &IngressRule| match rule.kind() {
            Protocol::All | Protocol::Other => None,
            Protocol::Tcp | Protocol::Udp => Some(rule.port_range()),
            Protocol::Icmp | Protocol::Icmpv6 => {
                Some((rule.from_port.unwrap_or(-1), rule.to_port.unwrap_or(-1)))
            }
        };
        self.kind() == other.kind()
            && (self.kind() != Protocol::Other
                || self.protocol.eq_ignore_ascii_case(&other.protocol))
            && ports(self) == ports(other)
            && self.source == other.source
    }
}

/// `from..=to` without `port`, as at most two ranges.
fn tcp_ranges_without(from: i32, to: i32, port: u16) -> impl Iterator<Item = (i32, i32)> {
    let port = i32::from(port);
    [(from, to.min(port - 1)), (from.max(port + 1), to)]
        .into_iter()
        .filter(|(from, to)| from <= to)
}

impl fmt::Display for IngressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports = |f: &mut fmt::Formatter<'_>, name: &str| match self.port_range() {
            (0, HIGHEST_PORT) => write!(f, "{name} all ports"),
            (from, to) if from == to => write!(f, "{name} {from}"),
            (from, to) => write!(f, "{name} {from}-{to}"),
        };
        match self.kind() {
            Protocol::All => f.write_str("all traffic")?,
            Protocol::Tcp => ports(f, "TCP")?,
            Protocol::Udp => ports(f, "UDP")?,
            Protocol::Icmp => f.write_str("ICMP")?,
            Protocol::Icmpv6 => f.write_str("ICMPv6")?,
            Protocol::Other => write!(f, "IP protocol {}", self.protocol)?,
        }
        write!(f, " from {}", self.source)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn rule(protocol: &str, ports: Option<(i32, i32)>, source: Source) -> IngressRule {
        IngressRule {
            protocol: protocol.to_owned(),
            from_port: ports.map(|(from, _)| from),
            to_port: ports.map(|(_, to)| to),
            source,
            description: Some("kept".to_owned()),
        }
    }

    pub fn ipv4(cidr: &str) -> Source {
        Source::Ipv4(cidr.to_owned())
    }

    fn group(id: &str) -> Source {
        Source::Group {
            id: id.to_owned(),
            user_id: None,
        }
    }

    fn shapes(rules: &[IngressRule]) -> Vec<(String, Option<i32>, Option<i32>)> {
        rules
            .iter()
            .map(|rule| (rule.protocol.clone(), rule.from_port, rule.to_port))
            .collect()
    }

    fn shape(protocol: &str, from: i32, to: i32) -> (String, Option<i32>, Option<i32>) {
        (protocol.to_owned(), Some(from), Some(to))
    }

    #[test]
    fn which_rules_reach_port_22() {
        let reaches =
            |protocol, ports| rule(protocol, ports, ipv4("10.0.0.0/8")).reaches_tcp_port(SSH_PORT);
        assert!(reaches("tcp", Some((22, 22))));
        assert!(reaches("6", Some((20, 25))));
        assert!(reaches("TCP", Some((0, 65535))));
        assert!(reaches("-1", None));
        assert!(reaches("-1", Some((-1, -1))));
        assert!(reaches("tcp", Some((-1, -1))));
        assert!(reaches("tcp", None));
        assert!(!reaches("tcp", Some((23, 8080))));
        assert!(!reaches("tcp", Some((0, 21))));
        assert!(!reaches("udp", Some((0, 65535))));
        assert!(!reaches("icmp", Some((-1, -1))));
        // Protocol 47 (GRE) has no ports: it never carries TCP.
        assert!(!reaches("47", None));
    }

    #[test]
    fn every_source_kind_is_judged_alike() {
        for source in [
            ipv4("0.0.0.0/0"),
            Source::Ipv6("::/0".to_owned()),
            Source::PrefixList("pl-1234".to_owned()),
            group("sg-1"),
        ] {
            assert!(rule("tcp", Some((22, 22)), source.clone()).reaches_tcp_port(SSH_PORT));
            assert!(!rule("tcp", Some((8080, 8080)), source).reaches_tcp_port(SSH_PORT));
        }
    }

    #[test]
    fn port_ranges_are_split_around_the_port() {
        let split = |from, to| {
            let replacement =
                rule("tcp", Some((from, to)), ipv4("10.0.0.0/8")).without_tcp_port(SSH_PORT);
            assert!(replacement.lost.is_none());
            shapes(&replacement.rules)
        };
        assert_eq!(
            split(0, 65535),
            [shape("tcp", 0, 21), shape("tcp", 23, 65535)]
        );
        assert_eq!(split(20, 25), [shape("tcp", 20, 21), shape("tcp", 23, 25)]);
        assert_eq!(split(22, 25), [shape("tcp", 23, 25)]);
        assert_eq!(split(21, 22), [shape("tcp", 21, 21)]);
        assert!(split(22, 22).is_empty());
    }

    #[test]
    fn replacements_keep_source_and_description() {
        let original = rule("tcp", Some((0, 65535)), group("sg-peer"));
        for replacement in original.without_tcp_port(SSH_PORT).rules {
            assert_eq!(replacement.source, original.source);
            assert_eq!(replacement.description, original.description);
            assert!(!replacement.reaches_tcp_port(SSH_PORT));
        }
    }

    #[test]
    fn all_traffic_keeps_tcp_udp_and_the_icmp_of_its_address_family() {
        let split = |source| shapes(&rule("-1", None, source).without_tcp_port(SSH_PORT).rules);
        let with = |icmp: &[&str]| {
            let mut expected = vec![
                shape("tcp", 0, 21),
                shape("tcp", 23, 65535),
                shape("udp", 0, 65535),
            ];
            expected.extend(icmp.iter().map(|protocol| shape(protocol, -1, -1)));
            expected
        };
        assert_eq!(split(ipv4("10.0.0.0/8")), with(&["icmp"]));
        assert_eq!(
            split(Source::Ipv6("2001:db8::/32".to_owned())),
            with(&["icmpv6"])
        );
        assert_eq!(split(group("sg-1")), with(&["icmp", "icmpv6"]));
        let lost = rule("-1", None, group("sg-1"))
            .without_tcp_port(SSH_PORT)
            .lost
            .unwrap();
        assert!(
            lost.contains("from security group sg-1 are no longer allowed"),
            "{lost}"
        );
    }

    #[test]
    fn same_permission_ignores_spelling_and_description() {
        let source = ipv4("10.0.0.0/8");
        let mut described = rule("tcp", Some((0, 21)), source.clone());
        described.description = Some("other words".to_owned());
        assert!(rule("6", Some((0, 21)), source.clone()).same_permission(&described));
        assert!(!rule("tcp", Some((0, 22)), source.clone()).same_permission(&described));
        assert!(!rule("tcp", Some((0, 21)), ipv4("10.0.0.0/9")).same_permission(&described));
        assert!(rule("-1", None, source.clone()).same_permission(&rule(
            "-1",
            Some((-1, -1)),
            source.clone()
        )));
        assert!(!rule("47", None, source.clone()).same_permission(&rule("50", None, source)));
    }

    #[test]
    fn rules_read_like_the_console() {
        assert_eq!(
            rule("tcp", Some((22, 22)), ipv4("10.0.0.0/8")).to_string(),
            "TCP 22 from 10.0.0.0/8"
        );
        assert_eq!(
            rule("tcp", Some((0, 65535)), group("sg-1")).to_string(),
            "TCP all ports from security group sg-1"
        );
        assert_eq!(
            rule("udp", Some((53, 53)), ipv4("10.0.0.0/8")).to_string(),
            "UDP 53 from 10.0.0.0/8"
        );
        assert_eq!(
            rule("-1", None, ipv4("10.0.0.0/8")).to_string(),
            "all traffic from 10.0.0.0/8"
        );
    }
}
