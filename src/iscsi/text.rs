// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Text key=value pairs (RFC 7143 6.1): NUL-terminated UTF-8 strings in
//! the data segment of Login and Text PDUs, and binary values (6.1: "0x"
//! hex or "0b" base64).

#![deny(clippy::indexing_slicing, clippy::string_slice)]

/// Parse a data segment into (key, value) pairs, in order. Malformed
/// entries (no '=', not UTF-8) are skipped.
pub fn parse(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter_map(|s| s.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Encode pairs as key=value\0...
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// The value of `key` in `pairs` (the last one, if repeated).
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Decode a binary value: 0x/0X hex or 0b/0B base64 (RFC 7143 6.1). The
/// value comes from a target: it is read as bytes, so a character outside
/// the alphabets is a malformed value whatever its width.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    match v.as_bytes() {
        [b'0', b'x' | b'X', digits @ ..] => decode_hex(digits),
        [b'0', b'b' | b'B', digits @ ..] => base64_decode(digits),
        _ => None,
    }
}

/// Hex digits, two per byte; an odd count has an implied leading zero
/// (`abc` is 0a bc). None if any byte is not a hex digit.
pub fn decode_hex(digits: &[u8]) -> Option<Vec<u8>> {
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let (odd, pairs) = digits.split_at(digits.len() % 2);
    let mut out = Vec::with_capacity(digits.len().div_ceil(2));
    if let [d] = odd {
        out.push(nibble(*d)?);
    }
    for pair in pairs.chunks_exact(2) {
        if let [hi, lo] = pair {
            out.push(nibble(*hi)? << 4 | nibble(*lo)?);
        }
    }
    Some(out)
}

pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let end = s.iter().rposition(|&c| c != b'=').map_or(0, |i| i + 1);
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s.get(..end)? {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Keys defined by RFC 7143 (section 13, and the obsolete marker keys of
/// RFC 3720, which 13.26 says to answer `Reject`, never `NotUnderstood`):
/// understood, so answered `Reject` when they are not ours to negotiate.
const STANDARD_KEYS: &[&str] = &[
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "SendTargets",
    "TargetName",
    "InitiatorName",
    "TargetAlias",
    "InitiatorAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "SessionType",
    "AuthMethod",
    "TaskReporting",
    "iSCSIProtocolLevel",
    "OFMarker",
    "IFMarker",
    "OFMarkInt",
    "IFMarkInt",
];

/// What the initiator makes of the keys a target sends in a full-feature
/// phase negotiation (RFC 7143 6.2, asked for by Asynchronous Message 4).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FullFeatureKeys {
    /// The target's new MaxRecvDataSegmentLength (a declaration, 13.12:
    /// the most data we may put in one PDU from now on).
    pub max_xmit_data_segment_length: Option<u32>,
    /// Our answers to the keys it offered, to send in the next Text Request.
    pub answers: Vec<(String, String)>,
}

/// Our answers to what a target offered among `keys` (RFC 7143 6.2: every
/// offer is answered). Not offers: the keys named in `ours` (its answers to
/// our offers), declarations (TargetAlias, TargetAddress,
/// TargetPortalGroupTag, MaxRecvDataSegmentLength) and its own answer
/// words (`Reject`, `Irrelevant`, `NotUnderstood`). We negotiate only what
/// we offer, so a standard key it offers is answered `Reject` (the value
/// stays what it was, 6.2), and a key we do not know `NotUnderstood`
/// (6.2.1).
pub fn answers_to(keys: &[(String, String)], ours: &[&str]) -> Vec<(String, String)> {
    keys.iter()
        .filter(|(k, v)| {
            !ours.contains(&k.as_str())
                && !matches!(
                    k.as_str(),
                    "TargetAlias"
                        | "TargetAddress"
                        | "TargetPortalGroupTag"
                        | "MaxRecvDataSegmentLength"
                )
                && !matches!(v.as_str(), "Reject" | "Irrelevant" | "NotUnderstood")
        })
        .map(|(k, _)| {
            let answer = if STANDARD_KEYS.contains(&k.as_str()) {
                "Reject"
            } else {
                "NotUnderstood"
            };
            (k.clone(), answer.to_string())
        })
        .collect()
}

/// Sort a target's full-feature phase keys into what we apply and what we
/// answer. Only MaxRecvDataSegmentLength may change after login for a
/// session like ours: every other standard key is login-only (IO) or
/// leading-connection-only (LO) and settled at login, so an offer of one
/// is answered `Reject` (`answers_to`, with nothing of ours under way). An
/// out-of-range MaxRecvDataSegmentLength (13.12: 512 to 2^24-1) is an
/// error.
pub fn full_feature_keys(keys: &[(String, String)]) -> Result<FullFeatureKeys, String> {
    let mut out = FullFeatureKeys {
        answers: answers_to(keys, &[]),
        ..FullFeatureKeys::default()
    };
    if let Some(v) = get(keys, "MaxRecvDataSegmentLength") {
        let n = v
            .parse::<u32>()
            .ok()
            .filter(|n| super::login::LENGTH_KEY_RANGE.contains(n))
            .ok_or_else(|| format!("MaxRecvDataSegmentLength={v} is out of range"))?;
        out.max_xmit_data_segment_length = Some(n);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let d = encode(&[("InitiatorName", "iqn.a:b"), ("SessionType", "Normal")]);
        assert_eq!(d, b"InitiatorName=iqn.a:b\0SessionType=Normal\0");
        let p = parse(&d);
        assert_eq!(get(&p, "SessionType"), Some("Normal"));
    }

    #[test]
    fn garbage_entries_are_skipped() {
        let p = parse(b"novalue\0\xff\xfe=x\0A=1\0\0");
        assert_eq!(p, vec![("A".to_string(), "1".to_string())]);
    }

    #[test]
    fn binary_values_in_hex_and_base64() {
        assert_eq!(decode_binary("0x0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("12"), None);
        assert_eq!(encode_hex(&[0, 0xab]), "0x00ab");
    }

    #[test]
    fn a_hex_value_with_a_multibyte_character_is_malformed() {
        // "0x", 'a', then U+20AC (3 bytes): byte 2 of the digits is inside
        // the character.
        assert_eq!(decode_binary("0xa\u{20ac}"), None);
        // The character first, then a digit.
        assert_eq!(decode_binary("0x\u{20ac}a"), None);
    }

    #[test]
    fn a_base64_value_with_a_multibyte_character_is_malformed() {
        // "0b", "AQ", U+00E9 (2 bytes), "=" padding.
        assert_eq!(decode_binary("0bAQ\u{e9}="), None);
    }

    fn pairs(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_declared_max_recv_data_segment_length_is_applied_and_not_answered() {
        let f = full_feature_keys(&pairs(&[("MaxRecvDataSegmentLength", "16384")])).unwrap();
        assert_eq!(
            f,
            FullFeatureKeys {
                max_xmit_data_segment_length: Some(16384),
                answers: vec![],
            }
        );
    }

    #[test]
    fn an_out_of_range_max_recv_data_segment_length_is_an_error() {
        for v in ["511", "16777216", "-1", "big", ""] {
            assert!(
                full_feature_keys(&pairs(&[("MaxRecvDataSegmentLength", v)])).is_err(),
                "{v}"
            );
        }
        assert!(full_feature_keys(&pairs(&[("MaxRecvDataSegmentLength", "512")])).is_ok());
        assert!(full_feature_keys(&pairs(&[("MaxRecvDataSegmentLength", "16777215")])).is_ok());
    }

    #[test]
    fn login_only_offers_are_rejected_and_unknown_keys_not_understood() {
        let f = full_feature_keys(&pairs(&[
            ("MaxBurstLength", "65536"),
            ("X-com.example.Fancy", "1"),
            ("HeaderDigest", "CRC32C"),
            ("Strange", "2"),
        ]))
        .unwrap();
        assert_eq!(
            f.answers,
            pairs(&[
                ("MaxBurstLength", "Reject"),
                ("X-com.example.Fancy", "NotUnderstood"),
                ("HeaderDigest", "Reject"),
                ("Strange", "NotUnderstood"),
            ])
        );
    }

    #[test]
    fn declarations_and_the_targets_own_answers_need_no_answer() {
        let f = full_feature_keys(&pairs(&[
            ("TargetAlias", "disk"),
            ("TargetPortalGroupTag", "1"),
            ("MaxBurstLength", "Reject"),
            ("X-vendor", "NotUnderstood"),
            ("ImmediateData", "Irrelevant"),
        ]))
        .unwrap();
        assert_eq!(f, FullFeatureKeys::default());
    }

    #[test]
    fn answers_skip_the_targets_answers_to_our_own_offers() {
        let keys = pairs(&[
            ("HeaderDigest", "None"),
            ("MaxBurstLength", "65536"),
            ("OFMarker", "Yes"),
            ("IFMarkInt", "2048~8192"),
            ("X-com.example.Opt", "1"),
            ("TargetPortalGroupTag", "1"),
        ]);
        assert_eq!(
            answers_to(&keys, &["HeaderDigest", "MaxBurstLength"]),
            // Markers: Reject, never NotUnderstood (RFC 7143 13.26).
            pairs(&[
                ("OFMarker", "Reject"),
                ("IFMarkInt", "Reject"),
                ("X-com.example.Opt", "NotUnderstood"),
            ])
        );
    }
}
