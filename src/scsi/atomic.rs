// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What WRITE ATOMIC(16) (SBC-4 4.29, 5.48; the command is in sbc.rs) may
//! do on a logical unit: the Block Limits fields that bound it. A write is
//! offered as atomic only where a crash or a concurrent read cannot see
//! part of it:
//!
//! - An O_DIRECT file or block device whose kernel and file system accept
//!   RWF_ATOMIC (statx STATX_WRITE_ATOMIC, Linux 6.11 and later): the
//!   write is one pwritev2(RWF_ATOMIC), which the kernel issues as one
//!   untorn write to a device that guarantees atomicity against power loss
//!   and against concurrent reads (SCSI atomic writes, NVMe's atomic write
//!   unit). RWF_ATOMIC takes powers of two between the reported minimum
//!   and maximum, naturally aligned; the Block Limits fields cannot say
//!   "powers of two only", so one size is offered: the smallest power of
//!   two that is at least a logical block and the kernel's minimum, as
//!   maximum, alignment and granularity alike.
//! - The null backstore: it stores nothing, so nothing can be torn; any
//!   transfer up to the maximum transfer length.
//! - An image in memory given atomic units (tests): its writes are copied
//!   under its lock.
//! - Nothing else. A buffered file is written back page by page, a file in
//!   memory is copied page by page under concurrent readers, and a daemon
//!   killed in the middle of a multi-page write leaves part of it: no
//!   atomicity is advertised there (all atomic fields zero) and WRITE
//!   ATOMIC(16) is an unsupported operation code on such an LU.
//!
//! Against other writers through this daemon the write is also atomic: it
//! holds its block range in the LU's write tracker.

use super::limits::MAX_TRANSFER_BYTES;
use crate::backstore::{AtomicUnits, Backstore, Kind};

/// The atomic write fields of the Block Limits page, in logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AtomicLimits {
    /// MAXIMUM ATOMIC TRANSFER LENGTH.
    pub max_blocks: u32,
    /// ATOMIC ALIGNMENT: the LBA is a multiple of it.
    pub align: u32,
    /// ATOMIC TRANSFER LENGTH GRANULARITY: the length is a multiple of it.
    pub granularity: u32,
}

/// What a logical unit of `block_size` on `store` may offer.
pub(crate) fn atomic_limits(store: &dyn Backstore, block_size: u32) -> Option<AtomicLimits> {
    match store.kind() {
        Kind::Null => Some(AtomicLimits {
            max_blocks: u32::try_from(MAX_TRANSFER_BYTES / u64::from(block_size)).ok()?,
            align: 1,
            granularity: 1,
        }),
        Kind::File | Kind::Block | Kind::Memory => from_units(store.atomic_units()?, block_size),
    }
}

/// One naturally aligned power-of-two size RWF_ATOMIC accepts, in blocks.
fn from_units(units: AtomicUnits, block_size: u32) -> Option<AtomicLimits> {
    let unit = units.min.max(block_size).checked_next_power_of_two()?;
    if unit > units.max || unit % block_size != 0 {
        return None;
    }
    let blocks = unit / block_size;
    Some(AtomicLimits {
        max_blocks: blocks,
        align: blocks,
        granularity: blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(min: u32, max: u32) -> AtomicUnits {
        AtomicUnits { min, max }
    }

    #[test]
    fn one_4k_unit_is_eight_512_byte_blocks_aligned_on_eight() {
        let l = from_units(units(4096, 65536), 512).unwrap();
        assert_eq!((l.max_blocks, l.align, l.granularity), (8, 8, 8));
    }

    #[test]
    fn a_unit_below_the_block_size_becomes_one_block() {
        let l = from_units(units(512, 65536), 4096).unwrap();
        assert_eq!((l.max_blocks, l.align, l.granularity), (1, 1, 1));
    }

    #[test]
    fn a_maximum_below_one_block_offers_nothing() {
        assert_eq!(from_units(units(512, 2048), 4096), None);
    }

    #[test]
    fn a_minimum_that_is_not_a_power_of_two_rounds_up() {
        let l = from_units(units(3072, 8192), 512).unwrap();
        assert_eq!(l.max_blocks, 8);
        assert_eq!(from_units(units(3072, 3072), 512), None);
    }
}
