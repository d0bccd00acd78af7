// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! FNV-1a (64 bits): a logical unit's identifiers derived from a stable
//! key, and the checksum of the reservation state file. Not for anything
//! an outsider could choose to collide.

/// FNV-1a of `bytes`.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    // FNV-1a, 64-bit offset basis and prime (draft-eastlake-fnv).
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
