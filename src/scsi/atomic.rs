// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! WRITE ATOMIC(16) (SBC-4 4.29, 5.48) and the Block Limits fields that
//! bound it. A write is offered as atomic only where a crash or a
//! concurrent read cannot see part of it:
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
//! - Nothing else. A buffered file is written back page by page, a file in
//!   memory is copied page by page under concurrent readers, and a daemon
//!   killed in the middle of a multi-page write leaves part of it: no
//!   atomicity is advertised there (all atomic fields zero) and WRITE
//!   ATOMIC(16) is an unsupported operation code on such an LU.
//!
//! Against other writers through this daemon the write is also atomic: it
//! holds its block range in the LU's write tracker.

use super::command::Ctx;
use super::command::Failure;
use super::lu::LogicalUnit;
use super::sbc::check_protect;
use super::sense::Sense;
use super::spc::MAX_TRANSFER_BYTES;
use super::writes::BlockRange;
use super::{IoKind, Outcome, Response};
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

/// WRITE ATOMIC(16) (SBC-4 5.48).
pub(crate) fn write_atomic16(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    check_protect(ctx)?;
    let t = ctx.transfer()?;
    let (lba, fua) = (t.lba, t.fua);
    let boundary = ctx.cdb.be16(10);
    // Two bytes wide: it fits.
    let blocks = u16::try_from(t.blocks).unwrap_or(u16::MAX);
    let (offset, len) = lu.byte_range(lba, u64::from(blocks))?;
    if blocks == 0 {
        return Ok(Outcome::Done(Response::good(Vec::new())));
    }
    // The opcode table offers the command only where there are limits.
    let limits = lu
        .atomic_limits()
        .ok_or(Sense::INVALID_COMMAND_OPERATION_CODE)?;
    if boundary != 0 {
        // No atomic boundaries: MAXIMUM ATOMIC BOUNDARY SIZE is zero.
        return Err(Sense::invalid_cdb_field(10, None).into());
    }
    let blocks = u32::from(blocks);
    if blocks > limits.max_blocks || blocks % limits.granularity != 0 {
        return Err(Sense::invalid_cdb_field(12, None).into());
    }
    if lba % u64::from(limits.align) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let len_usize = usize::try_from(len).map_err(|_| Sense::invalid_cdb_field(12, None))?;
    if ctx.data_out.len() < len_usize {
        return Err(Sense::invalid_cdb_field(12, None).into());
    }
    let mut data = vec![0u8; len_usize];
    ctx.data_out
        .read_at(0, &mut data)
        .map_err(|_| Sense::invalid_cdb_field(12, None))?;
    let sync = fua || !lu.write_cache();
    let store = lu.backstore();
    lu.writes()
        .exclusive(BlockRange::new(lba, u64::from(blocks)), || {
            store.write_atomic(&data, offset, sync)
        })
        .ok_or_else(LogicalUnit::status_busy)?
        .map_err(|e| lu.io_error_sense(IoKind::Write, lba, &e))?;
    Ok(Outcome::Done(Response::good(Vec::new())))
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
