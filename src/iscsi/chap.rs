// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! CHAP for iSCSI login (RFC 1994, RFC 7143 12.1.3): the response is
//! H(identifier || secret || challenge) with H = MD5, SHA-1 or SHA-256.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

use md5::Digest;

/// CHAP_A algorithm numbers: MD5 5 (RFC 1994), SHA-1 6, SHA-256 7 (IANA PPP
/// authentication algorithms, as used by Linux targets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5 = 5,
    Sha1 = 6,
    Sha256 = 7,
}

impl Algorithm {
    pub fn from_code(c: &str) -> Option<Algorithm> {
        match c.trim() {
            "5" => Some(Algorithm::Md5),
            "6" => Some(Algorithm::Sha1),
            "7" => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    /// Challenge length we send for mutual CHAP (the digest size).
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }
}

impl Algorithm {
    /// Strongest first: the order of a CHAP_A list (the target takes the
    /// first one it supports, RFC 7143 12.1.3).
    pub const ALL: [Algorithm; 3] = [Algorithm::Sha256, Algorithm::Sha1, Algorithm::Md5];

    /// The name used in options: `sha256`, `sha1`, `md5`.
    pub fn option_name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Algorithm::Md5 => 1,
            Algorithm::Sha1 => 2,
            Algorithm::Sha256 => 4,
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha1 => "SHA-1",
            Algorithm::Sha256 => "SHA-256",
        })
    }
}

/// The CHAP algorithms we allow, offered strongest first. Some targets
/// (tgt 1.0.85) fail the login when the list names an algorithm they do not
/// know instead of choosing one they do, so a refused offer is retried
/// without its strongest algorithm ([`Offer::weaker`]) until one is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer(u8);

impl Offer {
    /// SHA-256, SHA-1 and MD5 (the default).
    pub const ALL: Offer = Offer(7);

    /// Parse `sha256:sha1:md5` (any order, any non-empty subset; the offer
    /// is always made strongest first).
    pub fn parse(list: &str) -> Result<Offer, String> {
        let mut bits = 0;
        for name in list.split(':') {
            let a = Algorithm::ALL
                .into_iter()
                .find(|a| a.option_name().eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| {
                    format!(
                        "unknown CHAP algorithm '{name}' (sha256, sha1 or md5, joined with ':')"
                    )
                })?;
            bits |= a.bit();
        }
        Ok(Offer(bits))
    }

    pub fn contains(self, a: Algorithm) -> bool {
        self.0 & a.bit() != 0
    }

    fn algorithms(self) -> impl Iterator<Item = Algorithm> {
        Algorithm::ALL
            .into_iter()
            .filter(move |a| self.contains(*a))
    }

    /// The value of our CHAP_A key, e.g. `7,6,5`.
    pub fn key(self) -> String {
        let codes: Vec<String> = self.algorithms().map(|a| (a as u8).to_string()).collect();
        codes.join(",")
    }

    /// The offer as `chap-algorithms=` takes it, e.g. `sha256:sha1:md5`.
    pub fn option_value(self) -> String {
        let names: Vec<&str> = self.algorithms().map(|a| a.option_name()).collect();
        names.join(":")
    }

    /// This offer without its strongest algorithm; None when one is left.
    pub fn weaker(self) -> Option<Offer> {
        let strongest = self.algorithms().next()?;
        Some(Offer(self.0 & !strongest.bit())).filter(|o| o.0 != 0)
    }
}

impl Default for Offer {
    fn default() -> Offer {
        Offer::ALL
    }
}

impl std::fmt::Display for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.algorithms().map(|a| a.to_string()).collect();
        f.write_str(&names.join(", "))
    }
}

pub fn response(alg: Algorithm, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    fn h<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        let mut d = D::new();
        d.update([id]);
        d.update(secret);
        d.update(challenge);
        d.finalize().to_vec()
    }
    match alg {
        Algorithm::Md5 => h::<md5::Md5>(id, secret, challenge),
        Algorithm::Sha1 => h::<sha1::Sha1>(id, secret, challenge),
        Algorithm::Sha256 => h::<sha2::Sha256>(id, secret, challenge),
    }
}

/// Compare two responses without leaking where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random bytes for a challenge (from the kernel).
pub fn random(n: usize) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    let mut f = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut v)?;
    Ok(v)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn md5_response_matches_a_worked_example() {
        // MD5(0x01 || "secret" || 0x0102030405060708), computed independently
        // with `printf '\x01secret\x01\x02\x03\x04\x05\x06\x07\x08' | md5sum`.
        let r = response(Algorithm::Md5, 1, b"secret", &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            crate::iscsi::text::encode_hex(&r),
            "0x97dcf2f1a1dd8eebbc1e84a61ebd7b33"
        );
    }

    #[test]
    fn digest_sizes_follow_the_algorithm() {
        for a in [Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256] {
            assert_eq!(response(a, 9, b"s", b"c").len(), a.digest_len());
        }
    }

    #[test]
    fn offers_are_made_strongest_first_and_weaken_one_by_one() {
        assert_eq!(Offer::ALL.key(), "7,6,5");
        let o = Offer::parse("md5:SHA256").unwrap();
        assert_eq!(
            (o.key(), o.to_string()),
            ("7,5".into(), "SHA-256, MD5".into())
        );
        assert!(o.contains(Algorithm::Md5) && !o.contains(Algorithm::Sha1));
        let w = o.weaker().unwrap();
        assert_eq!(w.key(), "5");
        assert_eq!(w.weaker(), None);
        let mut keys = vec![];
        let mut next = Some(Offer::ALL);
        while let Some(o) = next {
            keys.push(o.key());
            next = o.weaker();
        }
        assert_eq!(keys, ["7,6,5", "6,5", "5"]);
        assert_eq!(Offer::parse("sha1").unwrap().key(), "6");
        for bad in ["", "sha3", "sha1,md5", "sha1:"] {
            assert!(Offer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}

#[cfg(test)]
mod sha_vectors {
    use super::*;

    #[test]
    fn sha256_response_matches_sha256sum() {
        // printf '\x07sha\x0a\x0b' | sha256sum
        let r = response(Algorithm::Sha256, 7, b"sha", &[0x0a, 0x0b]);
        assert_eq!(
            crate::iscsi::text::encode_hex(&r),
            "0x5b633724d095a694aa332de6d45b9fb10bdd9fbcd21429370dd475757def0231"
        );
    }

    #[test]
    fn sha1_response_matches_sha1sum() {
        // printf '\x06sha1\x0a\x0b' | sha1sum
        let r = response(Algorithm::Sha1, 6, b"sha1", &[0x0a, 0x0b]);
        assert_eq!(
            crate::iscsi::text::encode_hex(&r),
            "0x435f820abb2d3f7eec4808cee70dcf4e3070b893"
        );
    }
}
