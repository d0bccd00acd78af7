// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Command-line specs, iSCSI URLs and credentials files.

use std::path::Path;

use super::text;
use crate::config;
use crate::iscsi::{credentials, url};

/// Lines of `--socket` (`S...`) and `--lun` (`L...`) values, in order; any
/// other line is tried as both.
pub fn config_specs(data: &[u8]) {
    let input = text(data);
    let mut args = Vec::new();
    for line in input.lines() {
        let (is_socket, spec) = match line.split_at_checked(1) {
            Some(("S", rest)) => (true, rest),
            Some(("L", rest)) => (false, rest),
            _ => (false, line),
        };
        match config::parse_lun(spec) {
            Ok((_, lun)) => assert!(!secret_shown(spec, spec, &format!("{lun:?}"))),
            Err(e) => assert!(!secret_shown(spec, spec, &e.to_string()), "{e}"),
        }
        if let Err(e) = config::parse_socket(spec) {
            assert!(!secret_shown(spec, spec, &e.to_string()), "{e}");
        }
        let _ = config::parse_size(spec);
        assert!(config::valid_iscsi_name(&config::default_initiator(
            Path::new(spec)
        )));
        args.push((is_socket, spec.to_string()));
    }
    if let Err(e) = config::Config::from_ordered_args(&args) {
        for (_, spec) in &args {
            assert!(!secret_shown(spec, &input, &e.to_string()), "{e}");
        }
    }
}

/// Whether `shown` gives away the password of an iscsi:// URL in `spec`
/// (one that starts the spec, after its LUN number, or an option):
/// `%PASSWORD` appears in it (checked only when it appears once in `all`,
/// the input that `shown` may quote, so that it cannot come from
/// elsewhere). The spec quoted as it should be, redacted, is taken out of
/// `shown` first: the quote after it could end a `%PASSWORD` (a password
/// `pw'` and an option `x%pw` at the end of the spec: `...x%pw'`).
fn secret_shown(spec: &str, all: &str, shown: &str) -> bool {
    let shown = &shown.replace(&url::redact(spec), "<spec>");
    let unnumbered = spec
        .split_once(':')
        .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .map_or(spec, |(_, rest)| rest);
    unnumbered.split(',').any(|part| {
        let Some(p) = url::parse(part).ok().and_then(|u| u.password) else {
            return false;
        };
        let needle = format!("%{}", p.expose());
        // A password of stars cannot be told from its redaction ("%***").
        let starred = p.expose().bytes().all(|b| b == b'*');
        !starred && all.matches(&needle).count() == 1 && shown.contains(&needle)
    })
}

/// An iscsi:// URL, and a TargetAddress value.
pub fn iscsi_url(data: &[u8]) {
    let s = text(data);
    match url::parse(&s) {
        Ok(u) => {
            // What we connect to reads back as the same host and port.
            let back = url::parse(&format!("iscsi://{}", u.address()));
            let back = back.map(|b| (b.host, b.port));
            assert_eq!(back, Ok((u.host.clone(), u.port)), "{s}");
            if let Some(p) = &u.password {
                assert_eq!(format!("{p:?} {p}"), "*** ***");
            }
        }
        Err(e) => assert_eq!(e.url, url::redact(&s)),
    }
    let r = url::redact(&s);
    assert_eq!(url::redact(&r), r);
    if let Some(a) = url::portal_address(&s) {
        assert_eq!(url::portal_address(&a).as_deref(), Some(a.as_str()));
    }
}

/// A credentials file.
pub fn iscsi_credentials(data: &[u8]) {
    if let Ok(c) = credentials::parse(&text(data)) {
        for cred in c.chap.iter().chain(&c.mutual) {
            assert!(!cred.user.is_empty());
            assert_eq!(format!("{:?}", cred.secret), "***");
        }
        assert!(c.mutual.is_none() || c.chap.is_some());
    }
}
