// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `iscsi://[user[%password]@]host[:port][/target-iqn[/lun]]` (the form
//! libiscsi and QEMU use; IPv6 hosts in brackets).

/// iSCSI's registered TCP port (RFC 7143 14.1).
pub const DEFAULT_PORT: u16 = 3260;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiUrl {
    pub user: Option<String>,
    pub password: Option<String>,
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

/// The `host:port` to connect to from a TargetAddress value (RFC 7143
/// 13.9: `domainname[:port][,portal-group-tag]`, IPv6 in brackets, port
/// 3260 by default), as found in SendTargets answers and login redirects.
pub fn portal_address(target_address: &str) -> Option<String> {
    let v = target_address.split(',').next()?.trim();
    let (host, port): (String, u16) = if let Some(rest) = v.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => 3260,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (format!("[{host}]"), port)
    } else {
        match v.split_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (v.to_string(), 3260),
        }
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || "-._:[]".contains(c);
    if host.is_empty() || host == "[]" || port == 0 || !host.chars().all(valid) {
        return None;
    }
    Some(format!("{host}:{port}"))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{url}' is not an iscsi:// URL: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: &'static str,
}

pub fn parse(url: &str) -> Result<IscsiUrl, UrlError> {
    let err = |why| UrlError {
        url: url.to_string(),
        why,
    };
    let rest = url
        .strip_prefix("iscsi://")
        .ok_or_else(|| err("it must start with iscsi://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once('%') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(u.to_string()), None),
        },
        None => (None, None),
    };
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let end = r.find(']').ok_or_else(|| err("unclosed [ in the host"))?;
        let host = &r[..end];
        let port = match &r[end + 1..] {
            "" => DEFAULT_PORT,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| err("bad port"))?,
        };
        (host.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| err("bad port"))?),
            None => (hostport.to_string(), DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err(err("no host"));
    }
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
mod tests {
    use super::*;

    #[test]
    fn full_url_with_chap_user_and_password() {
        let u =
            parse("iscsi://alice%s3cret@10.1.2.3:3261/iqn.2026-11.org.example:disk1/2").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
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
        ] {
            assert!(parse(bad).is_err(), "{bad}");
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
            "", ",1", "[fd00::2", "h:port", "h:0", "[]:1", "a b:1", "h:70000",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}
