// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The qemu-pr-helper socket protocol (QEMU docs/interop/pr-helper.rst),
//! without I/O: what a request must look like and how a response is laid
//! out. Every integer on the wire is big-endian.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

/// Feature flags we offer in the handshake (none are defined).
pub const SUPPORTED_FEATURES: u32 = 0;
/// A request is exactly this many CDB bytes.
pub const CDB_LEN: usize = 16;
/// Sense bytes in every response.
pub const SENSE_LEN: usize = 96;
/// Largest allocation / parameter list length accepted.
pub const MAX_TRANSFER: usize = 8192;
/// Response header: status, payload size, sense.
pub const RESPONSE_HEADER_LEN: usize = 4 + 4 + SENSE_LEN;

pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;

/// Why a connection is closed (the protocol's only answer to a violation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("requested features {0:#x} that are not offered")]
    UnsupportedFeatures(u32),
    #[error("request without a file descriptor")]
    NoFd,
    #[error("request with {0} file descriptors")]
    TooManyFds(usize),
    #[error("opcode {0:#04x} is not PERSISTENT RESERVE IN/OUT")]
    NotPersistentReserve(u8),
    #[error("transfer length {0} is over {MAX_TRANSFER}")]
    TooLong(u32),
}

/// Which way data flows for a valid request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// PERSISTENT RESERVE IN: up to `len` bytes come back.
    In { len: usize },
    /// PERSISTENT RESERVE OUT: `len` parameter bytes follow the CDB.
    Out { len: usize },
}

/// Check the client's requested features (pr-helper.rst "Connection and
/// initialization").
pub fn check_features(requested: u32) -> Result<(), Violation> {
    if requested & !SUPPORTED_FEATURES != 0 {
        return Err(Violation::UnsupportedFeatures(requested));
    }
    Ok(())
}

/// Validate a CDB and the number of fds that came with it. The transfer
/// length is CDB bytes 7-8 (what QEMU fills in and reads back); for PR OUT,
/// whose PARAMETER LIST LENGTH spans bytes 5-8, non-zero bytes 5-6 would
/// mean more than 64 KiB and are a violation too.
pub fn check_request(cdb: &[u8; CDB_LEN], fds: usize) -> Result<Direction, Violation> {
    match fds {
        0 => return Err(Violation::NoFd),
        1 => {}
        n => return Err(Violation::TooManyFds(n)),
    }
    let len = usize::from(u16::from_be_bytes([cdb[7], cdb[8]]));
    match cdb[0] {
        PERSISTENT_RESERVE_IN => {
            if len > MAX_TRANSFER {
                return Err(Violation::TooLong(len as u32));
            }
            Ok(Direction::In { len })
        }
        PERSISTENT_RESERVE_OUT => {
            let full = u32::from_be_bytes([cdb[5], cdb[6], cdb[7], cdb[8]]);
            if full as usize > MAX_TRANSFER {
                return Err(Violation::TooLong(full));
            }
            Ok(Direction::Out { len })
        }
        op => Err(Violation::NotPersistentReserve(op)),
    }
}

/// The result of executing one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u8,
    pub sense: Vec<u8>,
    /// PR IN data (sent only with GOOD status).
    pub data: Vec<u8>,
}

/// Encode a response. The payload goes out only for PR IN with GOOD status,
/// and never longer than the allocation length: QEMU asserts both.
pub fn encode_reply(dir: Direction, r: &Reply) -> Vec<u8> {
    let payload: &[u8] = match dir {
        Direction::In { len } if r.status == 0 => r.data.get(..len).unwrap_or(&r.data),
        _ => &[],
    };
    let mut out = Vec::with_capacity(RESPONSE_HEADER_LEN + payload.len());
    out.extend_from_slice(&u32::from(r.status).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let mut sense = [0u8; SENSE_LEN];
    for (s, b) in sense.iter_mut().zip(&r.sense) {
        *s = *b;
    }
    out.extend_from_slice(&sense);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn cdb(bytes: &[u8]) -> [u8; CDB_LEN] {
        let mut c = [0u8; CDB_LEN];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    #[test]
    fn read_keys_with_one_fd_is_an_in_request() {
        // PR IN, READ KEYS, allocation length 0x0200.
        let c = cdb(&[0x5e, 0x00, 0, 0, 0, 0, 0, 0x02, 0x00, 0]);
        assert_eq!(check_request(&c, 1), Ok(Direction::In { len: 512 }));
    }

    #[test]
    fn register_carries_its_parameter_list_length() {
        let c = cdb(&[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0]);
        assert_eq!(check_request(&c, 1), Ok(Direction::Out { len: 24 }));
    }

    #[test]
    fn missing_or_extra_fds_are_violations() {
        let c = cdb(&[0x5e]);
        assert_eq!(check_request(&c, 0), Err(Violation::NoFd));
        assert_eq!(check_request(&c, 2), Err(Violation::TooManyFds(2)));
    }

    #[test]
    fn other_opcodes_are_violations() {
        assert_eq!(
            check_request(&cdb(&[0x28]), 1),
            Err(Violation::NotPersistentReserve(0x28))
        );
    }

    #[test]
    fn lengths_over_8k_are_violations() {
        let c = cdb(&[0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0x01, 0]);
        assert_eq!(check_request(&c, 1), Err(Violation::TooLong(8193)));
        let c = cdb(&[0x5f, 0, 0, 0, 0, 0x01, 0, 0, 24, 0]);
        assert!(matches!(check_request(&c, 1), Err(Violation::TooLong(_))));
    }

    #[test]
    fn unknown_feature_request_is_a_violation() {
        assert_eq!(check_features(0), Ok(()));
        assert_eq!(check_features(1), Err(Violation::UnsupportedFeatures(1)));
    }

    #[test]
    fn reply_layout_is_status_size_sense_payload() {
        let r = Reply {
            status: 0,
            sense: vec![],
            data: vec![1, 2, 3, 4, 5],
        };
        let out = encode_reply(Direction::In { len: 3 }, &r);
        assert_eq!(&out[0..8], &[0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(out.len(), 104 + 3);
        assert_eq!(&out[104..], &[1, 2, 3]);
    }

    #[test]
    fn no_payload_unless_pr_in_with_good_status() {
        let r = Reply {
            status: 2,
            sense: vec![0x70, 0, 5],
            data: vec![9; 8],
        };
        let out = encode_reply(Direction::In { len: 8 }, &r);
        assert_eq!(&out[0..8], &[0, 0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(&out[8..11], &[0x70, 0, 5]);
        assert_eq!(out.len(), 104);
        let ok = Reply {
            status: 0,
            sense: vec![],
            data: vec![9; 8],
        };
        assert_eq!(encode_reply(Direction::Out { len: 24 }, &ok).len(), 104);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any 16 bytes and fd count: either a violation, or a request
            /// whose length is within the limit and whose reply obeys
            /// QEMU's assertions.
            #[test]
            fn any_request_is_classified_safely(bytes in proptest::array::uniform16(any::<u8>()), fds in 0usize..4, status in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..9000)) {
                if let Ok(dir) = check_request(&bytes, fds) {
                    let (Direction::In { len } | Direction::Out { len }) = dir;
                    prop_assert!(len <= MAX_TRANSFER);
                    let out = encode_reply(dir, &Reply { status, sense: vec![], data });
                    let sz = u32::from_be_bytes([out[4], out[5], out[6], out[7]]) as usize;
                    prop_assert_eq!(out.len(), RESPONSE_HEADER_LEN + sz);
                    if sz > 0 {
                        let is_in = matches!(dir, Direction::In { .. });
                        prop_assert!(status == 0 && is_in && sz <= len);
                    }
                }
            }
        }
    }
}
