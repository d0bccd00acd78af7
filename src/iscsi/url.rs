// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `iscsi://[user[%password]@]host[:port][/target-iqn[/lun]]` (the form
//! libiscsi and QEMU use; IPv6 hosts in brackets).

#![deny(clippy::indexing_slicing, clippy::string_slice)]

/// iSCSI's registered TCP port (RFC 7143 14.1).
pub const DEFAULT_PORT: u16 = 3260;

use std::net::Ipv6Addr;

use super::secret::{Secret, REDACTED};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiUrl {
    pub user: Option<String>,
    /// Prints as `***`.
    pub password: Option<Secret>,
    /// A DNS name or IPv4 address, or an IPv6 address (without brackets).
    pub host: String,
    pub port: u16,
    pub target: Option<String>,
    pub lun: Option<u16>,
}

impl IscsiUrl {
    /// `host:port`, with brackets for IPv6, for connecting.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Whether `host` is one we can connect to and print back: in brackets
/// (`bracketed`, the brackets removed) an IPv6 address, otherwise a DNS
/// name or IPv4 address (letters, digits, '-', '.', '_'; no ':', so an
/// IPv6 address without brackets is refused rather than read as a host and
/// a port).
fn valid_host(host: &str, bracketed: bool) -> bool {
    if bracketed {
        host.parse::<Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    }
}

/// Split `host[:port]` or `[ipv6][:port]` (no port: `default`); None for
/// a malformed port, Err for a malformed host.
fn host_port(hostport: &str, default: u16) -> Result<(String, u16), &'static str> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or("bad port");
    if let Some(r) = hostport.strip_prefix('[') {
        let (host, after) = r.split_once(']').ok_or("unclosed [ in the host")?;
        if !valid_host(host, true) {
            return Err("the host in brackets is not an IPv6 address");
        }
        let port = match after {
            "" => default,
            p => port(p.strip_prefix(':').ok_or("bad port")?)?,
        };
        return Ok((host.to_string(), port));
    }
    let (host, port) = match hostport.split_once(':') {
        Some((_, p)) if p.contains(':') => {
            return Err("an IPv6 address goes in brackets ([fe80::1])")
        }
        Some((h, p)) => (h, port(p)?),
        None => (hostport, default),
    };
    if host.is_empty() {
        return Err("no host");
    }
    if !valid_host(host, false) {
        return Err("the host may hold letters, digits, '-', '.' and '_' only");
    }
    Ok((host.to_string(), port))
}

/// The `host:port` to connect to from a TargetAddress value (RFC 7143
/// 13.9: `domainname[:port][,portal-group-tag]`, IPv6 in brackets, port
/// 3260 by default), as found in SendTargets answers and login redirects.
pub fn portal_address(target_address: &str) -> Option<String> {
    let v = target_address.split(',').next()?.trim();
    let (host, port) = host_port(v, DEFAULT_PORT).ok()?;
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// `text` with the password of every iscsi:// URL in it replaced by
/// `***`: from the '%' after the user name to the last '@' after it (a
/// password may hold '@', '/' or ','), or, with no '@', to the next '/'
/// or ','. For error messages that quote a URL or a `--lun` spec.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, after)) = rest.split_once("iscsi://") {
        out.push_str(before);
        out.push_str("iscsi://");
        rest = after;
        let Some((user, secret_on)) = after.split_once('%') else {
            continue;
        };
        let end = secret_on
            .rfind('@')
            .or_else(|| secret_on.find(['/', ',']))
            .unwrap_or(secret_on.len());
        out.push_str(user);
        out.push('%');
        out.push_str(REDACTED);
        rest = secret_on.get(end..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// Why a URL was refused. `url` is redacted (`redact`): no password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{url}' is not an iscsi:// URL: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: &'static str,
}

pub fn parse(url: &str) -> Result<IscsiUrl, UrlError> {
    let err = |why| UrlError {
        url: redact(url),
        why,
    };
    let rest = url
        .strip_prefix("iscsi://")
        .ok_or_else(|| err("it must start with iscsi://"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once('%') {
            Some((u, p)) => (Some(u.to_string()), Some(Secret::from(p))),
            None => (Some(u.to_string()), None),
        },
        None => (None, None),
    };
    let (host, port) = host_port(hostport, DEFAULT_PORT).map_err(err)?;
    let mut parts = path.split('/').filter(|s| !s.is_empty());
    let target = parts.next().map(str::to_string);
    let lun = match parts.next() {
        Some(l) => Some(l.parse().map_err(|_| err("the LUN must be a number"))?),
        None => None,
    };
    if parts.next().is_some() {
        return Err(err("too many path parts"));
    }
    Ok(IscsiUrl {
        user,
        password,
        host,
        port,
        target,
        lun,
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn full_url_with_chap_user_and_password() {
        let u =
            parse("iscsi://alice%s3cret@10.1.2.3:3261/iqn.2026-11.org.example:disk1/2").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!((u.host.as_str(), u.port), ("10.1.2.3", 3261));
        assert_eq!(u.target.as_deref(), Some("iqn.2026-11.org.example:disk1"));
        assert_eq!(u.lun, Some(2));
    }

    #[test]
    fn ipv6_host_in_brackets_and_default_port() {
        let u = parse("iscsi://[::1]/iqn.x:y/0").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 3260));
        assert_eq!(u.address(), "[::1]:3260");
    }

    #[test]
    fn discovery_url_has_no_target() {
        let u = parse("iscsi://127.0.0.1:3300").unwrap();
        assert_eq!((u.target, u.lun), (None, None));
    }

    #[test]
    fn malformed_urls_are_rejected() {
        for bad in [
            "http://x/",
            "iscsi://",
            "iscsi://h:port/t",
            "iscsi://[::1/t",
            "iscsi://h/t/x",
            "iscsi://h/t/1/2",
            "iscsi://h:0/t",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_parse_error_does_not_echo_the_password() {
        let e = parse("iscsi://alice%s3cret@h:port/iqn.x:y/0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "'iscsi://alice%***@h:port/iqn.x:y/0' is not an iscsi:// URL: bad port"
        );
    }

    #[test]
    fn a_parsed_url_prints_no_password() {
        let u = parse("iscsi://alice%s3cret@h/iqn.x:y/0").unwrap();
        assert!(!format!("{u:?}").contains("s3cret"));
    }

    #[test]
    fn redaction_covers_a_password_holding_at_slash_and_comma() {
        assert_eq!(
            redact("2:iscsi://al%a@b/c,d@10.0.0.1/iqn.x:y/0,header-digest"),
            "2:iscsi://al%***@10.0.0.1/iqn.x:y/0,header-digest"
        );
    }

    #[test]
    fn redaction_without_a_host_stops_at_the_next_separator() {
        assert_eq!(redact("iscsi://al%s3cret/t,ro"), "iscsi://al%***/t,ro");
    }

    #[test]
    fn redaction_leaves_urls_without_a_password_alone() {
        let s = "iscsi://alice@h/iqn.x:y/0 and iscsi://h";
        assert_eq!(redact(s), s);
    }

    #[test]
    fn an_unbracketed_ipv6_address_is_refused() {
        let e = parse("iscsi://fe80::1/iqn.x:y/0").unwrap_err();
        assert_eq!(e.why, "an IPv6 address goes in brackets ([fe80::1])");
    }

    #[test]
    fn a_host_that_cannot_be_printed_back_is_refused() {
        // '[' not at the start, and a name with a space.
        for bad in ["iscsi://h[/t/0", "iscsi://a b/t/0", "iscsi://h]:1/t/0"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_in_brackets_must_be_an_ipv6_address() {
        for bad in ["iscsi://[]/t/0", "iscsi://[h]/t/0", "iscsi://[[::1]]/t/0"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_address_of_a_parsed_url_parses_back_to_the_same_host_and_port() {
        for url in [
            "iscsi://[fe80::1]:3261/t/0",
            "iscsi://san-1.example_x:7/t/0",
        ] {
            let u = parse(url).unwrap();
            let again = parse(&format!("iscsi://{}", u.address())).unwrap();
            assert_eq!((again.host, again.port), (u.host, u.port));
        }
    }

    #[test]
    fn target_addresses_become_portals() {
        let p = |s| portal_address(s);
        assert_eq!(p("10.0.0.2:3261,1"), Some("10.0.0.2:3261".into()));
        assert_eq!(p("10.0.0.2"), Some("10.0.0.2:3260".into()));
        assert_eq!(p("[fd00::2]:3262,7"), Some("[fd00::2]:3262".into()));
        assert_eq!(p("[fd00::2]"), Some("[fd00::2]:3260".into()));
        assert_eq!(p("san.example.com,2"), Some("san.example.com:3260".into()));
        for bad in [
            "", ",1", "[fd00::2", "h:port", "h:0", "[]:1", "a b:1", "h:70000", "a]b:1", "[h]:1",
            "fd00::2",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}
