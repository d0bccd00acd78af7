// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A credentials file, so CHAP secrets need not be on a command line (where
//! `ps` shows them). Lines of `key = value`; `#` starts a comment:
//!
//! ```text
//! user = alice
//! password = alicesecret12
//! # mutual CHAP: the target's account
//! target-user = tgtuser
//! target-password = targetsecret1
//! ```

#![deny(clippy::indexing_slicing, clippy::string_slice)]

use std::path::Path;

use super::login::Credentials;
use super::secret::Secret;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChapConfig {
    pub chap: Option<Credentials>,
    pub mutual: Option<Credentials>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("Cannot read credentials file {0}")]
    Read(String, #[source] std::io::Error),
    #[error("Credentials file {file}, line {line}: {why}")]
    Bad {
        file: String,
        line: usize,
        why: &'static str,
    },
}

pub fn load(path: &Path) -> Result<ChapConfig, CredentialsError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| CredentialsError::Read(file.clone(), e))?;
    parse(&text).map_err(|(line, why)| CredentialsError::Bad { file, line, why })
}

pub fn parse(text: &str) -> Result<ChapConfig, (usize, &'static str)> {
    let (mut user, mut password, mut tuser, mut tpassword) = (None, None, None, None);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or((i + 1, "expected key = value"))?;
        let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        match k.trim() {
            "user" => user = v,
            "password" => password = v,
            "target-user" => tuser = v,
            "target-password" => tpassword = v,
            _ => {
                return Err((
                    i + 1,
                    "unknown key (user, password, target-user, target-password)",
                ))
            }
        }
    }
    let pair = |u: Option<String>, p: Option<String>, what| match (u, p) {
        (Some(user), Some(secret)) => Ok(Some(Credentials {
            user,
            secret: Secret::from(secret),
        })),
        (None, None) => Ok(None),
        _ => Err((0, what)),
    };
    let chap = pair(user, password, "user and password go together")?;
    let mutual = pair(
        tuser,
        tpassword,
        "target-user and target-password go together",
    )?;
    if mutual.is_some() && chap.is_none() {
        return Err((0, "mutual CHAP needs user and password too"));
    }
    Ok(ChapConfig { chap, mutual })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn full_file_parses() {
        let c = parse(
            "user = alice\npassword=s3cret # trailing\n\ntarget-user=t\ntarget-password=tp\n",
        )
        .unwrap();
        assert_eq!(c.chap.unwrap().secret.expose(), "s3cret");
        assert_eq!(c.mutual.unwrap().user, "t");
    }

    #[test]
    fn parsed_credentials_print_no_secret() {
        let c = parse("user=alice\npassword=s3cret\ntarget-user=t\ntarget-password=tp4ss\n");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("tp4ss"),
            "{shown}"
        );
    }

    #[test]
    fn half_pairs_and_unknown_keys_are_errors() {
        assert!(parse("user=a\n").is_err());
        assert!(parse("target-user=a\ntarget-password=b\n").is_err());
        assert_eq!(parse("colour=blue\n").unwrap_err().0, 1);
    }
}
