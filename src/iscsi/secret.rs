// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A CHAP secret: a string that never prints. Its `Debug` and `Display`
//! show `***`, so a secret inside a configuration, a URL or login
//! parameters stays out of logs, errors and debug output; the bytes are
//! reached only on purpose, through [`Secret::expose`].

use std::fmt;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

/// What a secret prints as.
pub const REDACTED: &str = "***";

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself (for CHAP computations, never for printing).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_stars() {
        let s = Secret::from("hunter2hunter2");
        assert_eq!(format!("{s:?}"), "***");
    }

    #[test]
    fn display_prints_stars() {
        let s = Secret::from("hunter2hunter2");
        assert_eq!(format!("{s}"), "***");
    }

    #[test]
    fn expose_gives_the_secret() {
        assert_eq!(Secret::from("hunter2hunter2").expose(), "hunter2hunter2");
    }
}
