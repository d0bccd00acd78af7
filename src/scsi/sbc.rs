// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SBC-3 block commands.

use super::cdb::{be16_at, be32_at, be64_at};
use super::command::{Ctx, Failure, IoKind, Outcome, Response, Transfer};
use super::limits::{
    max_write_same_blocks, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BYTES, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS,
};
use super::lu::LogicalUnit;
use super::sense::Sense;
use super::writes::BlockRange;
use crate::backstore::Extent;

fn good() -> Result<Outcome, Failure> {
    Ok(Outcome::Done(Response::good(Vec::new())))
}

/// RDPROTECT/WRPROTECT/VRPROTECT (byte 1 bits 7-5) must be zero: we have no
/// protection information.
pub(crate) fn check_protect(ctx: &Ctx) -> Result<(), Sense> {
    if ctx.cdb.byte(1) & 0xe0 != 0 {
        return Err(Sense::invalid_cdb_field(1, Some(7)));
    }
    Ok(())
}

/// Check LBA range and size limits of a data transfer.
fn checked_transfer(lu: &LogicalUnit, ctx: &Ctx) -> Result<Transfer, Sense> {
    check_protect(ctx)?;
    let t = ctx.transfer()?;
    let bytes = t.blocks.saturating_mul(u64::from(lu.block_size()));
    if bytes > MAX_TRANSFER_BYTES {
        return Err(Sense::invalid_cdb_field(t.length_field, None));
    }
    lu.byte_range(t.lba, t.blocks)?;
    Ok(t)
}

pub(crate) fn read(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let t = checked_transfer(lu, ctx)?;
    if t.blocks == 0 {
        return good();
    }
    Ok(lu.block_io(IoKind::Read, t.lba, t.blocks, t.fua))
}

pub(crate) fn write(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let t = checked_transfer(lu, ctx)?;
    if t.blocks == 0 {
        return good();
    }
    Ok(lu.block_io(IoKind::Write, t.lba, t.blocks, t.fua))
}

/// Read `len` bytes of data-out, or fail: the initiator sent less than the
/// CDB says (the field pointer names the length field, at byte `field`).
fn data_out(ctx: &mut Ctx, len: u64, field: u16) -> Result<Vec<u8>, Sense> {
    let short = Sense::invalid_cdb_field(field, None);
    let len = usize::try_from(len).map_err(|_| short)?;
    if ctx.data_out.len() < len {
        return Err(short);
    }
    let mut buf = vec![0u8; len];
    ctx.data_out.read_at(0, &mut buf).map_err(|_| short)?;
    Ok(buf)
}

/// Read `len` bytes from the medium at `offset` (for the verify/compare paths).
fn read_medium(lu: &LogicalUnit, lba: u64, offset: u64, len: u64) -> Result<Vec<u8>, Sense> {
    let mut buf = vec![0u8; len as usize];
    lu.backstore()
        .read_at(&mut buf, offset)
        .map_err(|e| lu.io_error_sense(IoKind::Read, lba, &e))?;
    Ok(buf)
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// VERIFY(10)/(12)/(16) (SBC-4 5.44-5.46).
pub(crate) fn verify(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let t = checked_transfer(lu, ctx)?;
    let bytchk = (ctx.cdb.byte(1) >> 1) & 0x03;
    if bytchk == 0b10 {
        return Err(Sense::invalid_cdb_field(1, Some(2)).into());
    }
    let (offset, len) = lu.byte_range(t.lba, t.blocks)?;
    if t.blocks == 0 {
        return good();
    }
    let medium = read_medium(lu, t.lba, offset, len)?;
    let expected = match bytchk {
        // Medium verification: the read above is the check.
        0b00 => return good(),
        0b01 => data_out(ctx, len, t.length_field)?,
        // 11b: one block of data-out compared against every block.
        _ => data_out(ctx, u64::from(lu.block_size()), t.length_field)?.repeat(t.blocks as usize),
    };
    if let Some(at) = first_difference(&medium, &expected) {
        let at = if bytchk == 0b11 {
            at % lu.block_size() as usize
        } else {
            at
        };
        return Err(Sense::MISCOMPARE_DURING_VERIFY_OPERATION
            .with_information(at as u64)
            .into());
    }
    good()
}

/// WRITE AND VERIFY(10)/(12)/(16) (SBC-4 5.52-5.54).
pub(crate) fn write_and_verify(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let t = checked_transfer(lu, ctx)?;
    let bytchk = ctx.cdb.bit(1, 1);
    let (offset, len) = lu.byte_range(t.lba, t.blocks)?;
    if t.blocks == 0 {
        return good();
    }
    let data = data_out(ctx, len, t.length_field)?;
    let range = BlockRange::new(t.lba, t.blocks);
    let result = lu.writes().exclusive(range, || -> Result<(), Sense> {
        let bs = lu.backstore();
        bs.write_at(&data, offset)
            .and_then(|()| bs.flush())
            .map_err(|e| lu.io_error_sense(IoKind::Write, t.lba, &e))?;
        let medium = read_medium(lu, t.lba, offset, len)?;
        if bytchk {
            if let Some(at) = first_difference(&medium, &data) {
                return Err(Sense::MISCOMPARE_DURING_VERIFY_OPERATION.with_information(at as u64));
            }
        }
        Ok(())
    });
    result.ok_or_else(LogicalUnit::status_busy)??;
    good()
}

/// SYNCHRONIZE CACHE(10)/(16) (SBC-3 5.22/5.23). A length of 0 means "to
/// the end of the medium". The whole file is flushed: that covers the range.
pub(crate) fn synchronize_cache(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let t = ctx.transfer()?;
    lu.byte_range(t.lba, t.blocks)?;
    Ok(lu.block_io(IoKind::Flush, t.lba, 0, false))
}

/// WRITE SAME(10)/(16) (SBC-4 5.49/5.50), with UNMAP and NDOB.
pub(crate) fn write_same(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    check_protect(ctx)?;
    if ctx.cdb.bit(1, 4) {
        // ANCHOR: anchored LBAs are not supported.
        return Err(Sense::invalid_cdb_field(1, Some(4)).into());
    }
    let unmap = ctx.cdb.bit(1, 3);
    let ndob = ctx.cdb.opcode() == 0x93 && ctx.cdb.bit(1, 0);
    let t = ctx.transfer()?;
    let len_field = t.length_field;
    if t.blocks == 0 {
        // WSNZ = 1 in the block limits page.
        return Err(Sense::invalid_cdb_field(len_field, None).into());
    }
    // One limit for every WRITE SAME, whatever UNMAP says: with a non-zero
    // pattern an UNMAP request writes every block like any other.
    if t.blocks > max_write_same_blocks(lu.block_size()) {
        return Err(Sense::invalid_cdb_field(len_field, None).into());
    }
    let (offset, len) = lu.byte_range(t.lba, t.blocks)?;
    let bs = u64::from(lu.block_size());
    // The Data-Out Buffer holds the one logical block the CDB implies, or
    // nothing with NDOB; a buffer of another size is not this command's.
    let expected = if ndob { 0 } else { bs };
    if ctx.data_out.len() as u64 != expected {
        return Err(Sense::INVALID_FIELD_IN_CDB.into());
    }
    let pattern = if ndob {
        vec![0u8; bs as usize]
    } else {
        data_out(ctx, bs, len_field)?
    };
    let zero = pattern.iter().all(|&b| b == 0);
    let store = lu.backstore();
    let result = lu.writes().exclusive(BlockRange::new(t.lba, t.blocks), || {
        if zero && unmap && lu.thin() {
            store.deallocate(offset, len)
        } else if zero {
            store.write_zeroes(offset, len)
        } else {
            store.write_repeated(&pattern, offset, len)
        }
    });
    result
        .ok_or_else(LogicalUnit::status_busy)?
        .map_err(|e| lu.io_error_sense(IoKind::Write, t.lba, &e))?;
    good()
}

/// UNMAP (SBC-3 5.28).
pub(crate) fn unmap(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    if ctx.cdb.bit(1, 0) {
        return Err(Sense::invalid_cdb_field(1, Some(0)).into());
    }
    let len = u64::from(ctx.cdb.be16(7));
    if len == 0 {
        return good();
    }
    if len < 8 {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
    }
    if (ctx.data_out.len() as u64) < len {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
    }
    // PARAMETER LIST LENGTH, bytes 7-8.
    let p = data_out(ctx, len, 7)?;
    let bd_len = usize::from(be16_at(&p, 2)).min(p.len() - 8);
    // A trailing partial descriptor is ignored (SBC-3 5.28.2).
    let count = bd_len / 16;
    if count as u32 > MAX_UNMAP_DESCRIPTORS {
        return Err(Sense::invalid_param_field(2, None).into());
    }
    let mut ranges = Vec::with_capacity(count);
    let mut total = 0u64;
    for i in 0..count {
        let at = 8 + 16 * i;
        let lba = be64_at(&p, at);
        let blocks = u64::from(be32_at(&p, at + 8));
        let (offset, bytes) = lu.byte_range(lba, blocks)?;
        total += blocks;
        if total > u64::from(MAX_UNMAP_BLOCKS) {
            return Err(Sense::invalid_param_field((at + 8) as u16, None).into());
        }
        if blocks > 0 {
            ranges.push((lba, blocks, offset, bytes));
        }
    }
    if !lu.thin() && lu.backstore().kind() != crate::backstore::Kind::Block {
        // Nothing to deallocate on a fully provisioned LU (a block device
        // discards); UNMAP is advisory.
        return good();
    }
    for (lba, blocks, offset, bytes) in ranges {
        lu.writes()
            .exclusive(BlockRange::new(lba, blocks), || {
                lu.backstore().deallocate(offset, bytes)
            })
            .ok_or_else(LogicalUnit::status_busy)?
            .map_err(|e| lu.io_error_sense(IoKind::Write, lba, &e))?;
    }
    good()
}

/// GET LBA STATUS (SBC-3 5.16): mapped / deallocated extents from the
/// filesystem's allocation map (SEEK_DATA / SEEK_HOLE).
pub(crate) fn get_lba_status(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let start = ctx.cdb.be64(2);
    let alloc = ctx.cdb.be32(10) as usize;
    if start >= lu.blocks() {
        return Err(Sense::LBA_OUT_OF_RANGE.into());
    }
    let bs = u64::from(lu.block_size());
    // Enough descriptors to fill the allocation length (at least one).
    let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 4096);
    let mut d = vec![0u8; 8];
    let mut lba = start;
    while lba < lu.blocks() && (d.len() - 8) / 16 < max_desc {
        let ext = lu
            .backstore()
            .extent_at(lba * bs)
            .map_err(|e| lu.io_error_sense(IoKind::Read, lba, &e))?;
        let (status, bytes) = match ext {
            Extent::Mapped(n) => (0u8, n),
            Extent::Deallocated(n) => (1u8, n),
        };
        let blocks = bytes
            .div_ceil(bs)
            .clamp(1, lu.blocks() - lba)
            .min(u64::from(u32::MAX));
        d.extend_from_slice(&lba.to_be_bytes());
        d.extend_from_slice(&(blocks as u32).to_be_bytes());
        d.extend_from_slice(&[status, 0, 0, 0]);
        lba += blocks;
    }
    let plen = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&plen.to_be_bytes());
    d.truncate(alloc);
    Ok(Outcome::Done(Response::good(d)))
}

/// COMPARE AND WRITE (SBC-3 5.2): atomic against other writers of the same
/// blocks through the LU's write tracker.
pub(crate) fn compare_and_write(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    check_protect(ctx)?;
    let t = ctx.transfer()?;
    let (lba, n) = (t.lba, t.blocks);
    if n == 0 {
        return good();
    }
    if n > u64::from(MAX_COMPARE_AND_WRITE_BLOCKS) {
        return Err(Sense::invalid_cdb_field(t.length_field, None).into());
    }
    let (offset, len) = lu.byte_range(lba, n)?;
    let data = data_out(ctx, 2 * len, t.length_field)?;
    let (verify, write) = data.split_at(len as usize);
    let fua = t.fua || !lu.write_cache();
    let result = lu.writes().exclusive(BlockRange::new(lba, n), || {
        let medium = read_medium(lu, lba, offset, len)?;
        if let Some(at) = first_difference(&medium, verify) {
            return Err(Sense::MISCOMPARE_DURING_VERIFY_OPERATION.with_information(at as u64));
        }
        let store = lu.backstore();
        store
            .write_at(write, offset)
            .and_then(|()| if fua { store.flush() } else { Ok(()) })
            .map_err(|e| lu.io_error_sense(IoKind::Write, lba, &e))
    });
    result.ok_or_else(LogicalUnit::status_busy)??;
    good()
}

/// ORWRITE(16) (SBC-4 5.12): read the blocks, OR the Data-Out Buffer into
/// them and write the result, as one uninterrupted action against other
/// writers of the same blocks (the LU's write tracker, as COMPARE AND WRITE).
pub(crate) fn orwrite(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let t = checked_transfer(lu, ctx)?;
    let (offset, len) = lu.byte_range(t.lba, t.blocks)?;
    if t.blocks == 0 {
        return good();
    }
    let data = data_out(ctx, len, t.length_field)?;
    let fua = t.fua || !lu.write_cache();
    let result = lu.writes().exclusive(BlockRange::new(t.lba, t.blocks), || {
        let mut medium = read_medium(lu, t.lba, offset, len)?;
        for (m, d) in medium.iter_mut().zip(&data) {
            *m |= d;
        }
        let store = lu.backstore();
        store
            .write_at(&medium, offset)
            .and_then(|()| if fua { store.flush() } else { Ok(()) })
            .map_err(|e| lu.io_error_sense(IoKind::Write, t.lba, &e))
    });
    result.ok_or_else(LogicalUnit::status_busy)??;
    good()
}

/// PRE-FETCH(10)/(16) (SBC-4 5.9/5.10). The daemon has no cache of its
/// own: the blocks are handed to the host's page cache as a hint (see
/// [`crate::backstore::Backstore::prefetch`]), which the kernel may act on
/// or not. CONDITION MET would promise that the blocks are (or will be) in
/// the cache, so it is never claimed; GOOD is what SBC-4 has the device
/// server return when the cache cannot take all the blocks. IMMED changes
/// nothing: the hint is given before the status either way.
pub(crate) fn prefetch(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let t = ctx.transfer()?;
    // A PREFETCH LENGTH of zero means "to the last logical block".
    let blocks = if t.blocks == 0 {
        lu.blocks().saturating_sub(t.lba)
    } else {
        t.blocks
    };
    if t.lba >= lu.blocks() {
        return Err(Sense::LBA_OUT_OF_RANGE.into());
    }
    let (offset, len) = lu.byte_range(t.lba, blocks)?;
    // The cache we offer a PRE-FETCH: one maximal transfer.
    lu.backstore().prefetch(offset, len.min(MAX_TRANSFER_BYTES));
    good()
}

/// READ DEFECT DATA(10)/(12) (SBC-4 5.15/5.16): a file or block device
/// has no defect list of its own to report, so the list is empty, in
/// whichever of the address descriptor formats (SBC-4 6.2) is asked for.
pub(crate) fn read_defect_data(_lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let ten = ctx.cdb.opcode() == 0x37;
    let flags_byte = if ten { 2 } else { 1 };
    let flags = ctx.cdb.byte(flags_byte);
    let format = flags & 0x07;
    // 110b is vendor specific and 111b reserved (SBC-4 table 6.2).
    if format > 0b101 {
        return Err(Sense::invalid_cdb_field(flags_byte as u16, Some(2)).into());
    }
    // REQ_PLIST and REQ_GLIST come back as PLISTV and GLISTV: the
    // (empty) lists asked for are the ones returned.
    let header_flags = flags & 0x1f;
    let (data, alloc) = if ten {
        // DEFECT LIST LENGTH 0.
        (vec![0, header_flags, 0, 0], usize::from(ctx.cdb.be16(7)))
    } else {
        // GENERATION CODE 0 (not supported), DEFECT LIST LENGTH 0.
        (
            vec![0, header_flags, 0, 0, 0, 0, 0, 0],
            ctx.cdb.be32(6) as usize,
        )
    };
    let mut data = data;
    data.truncate(alloc);
    Ok(Outcome::Done(Response::good(data)))
}

/// READ CAPACITY(10) (SBC-3 5.15).
pub(crate) fn read_capacity10(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    if !ctx.cdb.bit(8, 0) && ctx.cdb.be32(2) != 0 {
        return Err(Sense::invalid_cdb_field(2, None).into());
    }
    let last = lu.blocks().saturating_sub(1);
    let mut d = u32::try_from(last)
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    d.extend_from_slice(&lu.block_size().to_be_bytes());
    Ok(Outcome::Done(Response::good(d)))
}

/// READ CAPACITY(16) (SBC-3 5.16).
pub(crate) fn read_capacity16(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let alloc = ctx.cdb.be32(10) as usize;
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&lu.blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&lu.block_size().to_be_bytes());
    if lu.block_size() == 512 {
        d[13] = 3; // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: 4096-byte physical blocks
    }
    if lu.thin() {
        d[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    d.truncate(alloc);
    Ok(Outcome::Done(Response::good(d)))
}

/// START STOP UNIT (SBC-3 5.25).
pub(crate) fn start_stop_unit(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let b = ctx.cdb.byte(4);
    let power_condition = b >> 4;
    match power_condition {
        0 => {}
        // ACTIVE, IDLE, STANDBY, LU_CONTROL, FORCE_IDLE_0, FORCE_STANDBY_0:
        // accepted; a file has no power states.
        0x1 | 0x2 | 0x3 | 0x7 | 0xa | 0xb => return good(),
        _ => return Err(Sense::invalid_cdb_field(4, Some(7)).into()),
    }
    if b & 0x02 != 0 {
        // LOEJ: the medium is not removable.
        return Err(Sense::invalid_cdb_field(4, Some(1)).into());
    }
    let start = b & 0x01 != 0;
    let no_flush = b & 0x04 != 0;
    if !start && !no_flush {
        lu.flush()
            .map_err(|e| lu.io_error_sense(IoKind::Flush, 0, &e))?;
    }
    lu.set_stopped(!start);
    good()
}

/// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.11): accepted; nothing is removable.
pub(crate) fn prevent_allow(_lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    if ctx.cdb.byte(4) & 0x03 > 1 {
        return Err(Sense::invalid_cdb_field(4, Some(1)).into());
    }
    good()
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
