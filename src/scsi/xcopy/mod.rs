// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18, 6.19):
//! the logical unit as a copy manager for block-device-to-block-device
//! segments between any of the logical units this daemon serves, named by
//! identification descriptors (CSCD descriptor E4h) that carry one of
//! their VPD page 83h designators.
//!
//! The data moves on the host (`backstore::copy`: copy_file_range,
//! which a file system may turn into a reflink, else a buffer) and never
//! through the guest. A command is bounded like a maximal WRITE: one
//! segment of at most the maximum transfer length (32 MiB - 4 KiB), so a
//! copy of a large LU is a series of commands (sg_xcopy and VMware size
//! theirs from RECEIVE COPY OPERATING PARAMETERS) and no queue worker is
//! held for long. While a segment is copied its destination range is
//! registered as an ordinary write in the destination's write tracker, so
//! COMPARE AND WRITE and the other atomic commands stay atomic.
//!
//! Results of copies with LIST ID USAGE 00b are held per I_T nexus and
//! list identifier until the identifier is used again, the nexus is lost or
//! reset, or a LOGICAL UNIT RESET; at most `HELD_RESULTS` per LU.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use log::warn;

pub(crate) mod results;

use results::{Progress, HELD_RESULTS};

use super::cdb::{be16_at, be32_at, be64_at};
use super::command::{Ctx, Failure, Outcome, Response};
use super::limits::MAX_TRANSFER_BYTES;
use super::lu::LogicalUnit;
use super::pr::Access;
use super::sense::Sense;
use super::writes::BlockRange;

/// Operating parameters (RECEIVE COPY OPERATING PARAMETERS, and the
/// Third-party Copy VPD page).
pub(crate) const MAX_CSCD_DESCRIPTORS: u16 = 2;
pub(crate) const MAX_SEGMENT_DESCRIPTORS: u16 = 1;
/// Room for more descriptors than the counts allow, so that too many of
/// them is reported as such rather than as a list too long.
pub(crate) const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 1024;
/// One segment: no more than one WRITE may carry.
pub(crate) const MAX_SEGMENT_LENGTH: u32 = MAX_TRANSFER_BYTES as u32;

/// Descriptor type codes: block device to block device segment, and
/// identification CSCD descriptor (SPC-4 tables 6.4).
pub(crate) const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;
pub(crate) const CSCD_IDENTIFICATION: u8 = 0xe4;

const HEADER_LEN: usize = 16;
const CSCD_LEN: usize = 32;
/// Block-to-block segment descriptor: 4-byte header + 24.
const B2B_LEN: usize = 28;

// ---------------------------------------------------------------------------
// The logical units a copy may name.

fn registry() -> MutexGuard<'static, Vec<Weak<LogicalUnit>>> {
    static UNITS: Mutex<Vec<Weak<LogicalUnit>>> = Mutex::new(Vec::new());
    UNITS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Make `lu` reachable as a copy source or destination (every logical unit
/// a target serves; see `Target::with_remote`).
pub(crate) fn register(lu: &Arc<LogicalUnit>) {
    let mut units = registry();
    units.retain(|w| w.strong_count() > 0);
    if !units
        .iter()
        .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(lu)))
    {
        units.push(Arc::downgrade(lu));
    }
}

/// The one logical unit served here whose LU designator is `designator`
/// (a designation descriptor: code set, association and type, length,
/// value). Two units with the same designator (the same `serial=` given
/// twice) are ambiguous, and neither is found.
fn find(designator: &[u8]) -> Option<Arc<LogicalUnit>> {
    let units = registry();
    let mut found = units
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|lu| lu.has_designator(designator));
    let first = found.next()?;
    found
        .all(|other| Arc::ptr_eq(&first, &other))
        .then_some(first)
}

// ---------------------------------------------------------------------------
// EXTENDED COPY (LID1).

/// A parsed block-to-block segment.
struct Segment {
    src: usize,
    dst: usize,
    dc: bool,
    blocks: u16,
    src_lba: u64,
    dst_lba: u64,
}

/// The parameter list, checked as far as it can be without the units.
struct CopyList {
    list_id: u8,
    held: bool,
    /// Designation descriptors (bytes 4-23 of each CSCD descriptor) and
    /// the DISK BLOCK LENGTH each gives.
    cscds: Vec<([u8; 20], u32)>,
    segments: Vec<Segment>,
}

/// EXTENDED COPY (LID1) (SPC-4 6.4).
pub(crate) fn extended_copy(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let plen = ctx.cdb.be32(10) as usize;
    if plen == 0 {
        return Ok(Outcome::Done(Response::good(Vec::new())));
    }
    if ctx.data_out.len() < plen {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
    }
    let mut p = vec![0u8; plen];
    ctx.data_out
        .read_at(0, &mut p)
        .map_err(|_| Sense::PARAMETER_LIST_LENGTH_ERROR)?;
    let list = parse(&p)?;
    let nexus = ctx.nexus.id;
    if list.held && !lu.copies().start(nexus, list.list_id) {
        return Err(Sense::OPERATION_IN_PROGRESS.into());
    }
    let mut progress = Progress::default();
    let result = run(lu, ctx, &list, &mut progress);
    if list.held {
        let failure = result
            .as_ref()
            .err()
            .map(|s| s.encode(lu.descriptor_sense()));
        lu.copies().finish(nexus, list.list_id, &progress, failure);
    }
    result?;
    Ok(Outcome::Done(Response::good(Vec::new())))
}

/// Check the parameter list (SPC-4 6.4.3) in the order its fields come.
fn parse(p: &[u8]) -> Result<CopyList, Sense> {
    if p.len() < HEADER_LEN {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let list_id = p[0];
    let usage = (p[1] >> 3) & 0x03;
    let held = match usage {
        0b00 => true,
        // 10b: nothing is held; 11b: no list identifier.
        0b10 | 0b11 => false,
        _ => return Err(Sense::invalid_param_field(1, Some(4))),
    };
    if usage == 0b11 && list_id != 0 {
        return Err(Sense::invalid_param_field(0, None));
    }
    let cscd_len = usize::from(be16_at(p, 2));
    let seg_len = be32_at(p, 8) as usize;
    let inline_len = be32_at(p, 12) as usize;
    let needed = HEADER_LEN
        .checked_add(cscd_len)
        .and_then(|n| n.checked_add(seg_len))
        .and_then(|n| n.checked_add(inline_len));
    if needed.is_none_or(|n| n > p.len()) {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH as usize {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    if inline_len > 0 {
        // MAXIMUM INLINE DATA LENGTH is zero.
        return Err(Sense::INLINE_DATA_LENGTH_EXCEEDED);
    }
    if cscd_len % CSCD_LEN != 0 {
        return Err(Sense::invalid_param_field(2, None));
    }
    if cscd_len / CSCD_LEN > usize::from(MAX_CSCD_DESCRIPTORS) {
        return Err(Sense::TOO_MANY_TARGET_DESCRIPTORS);
    }
    let mut cscds = Vec::new();
    for at in (HEADER_LEN..HEADER_LEN + cscd_len).step_by(CSCD_LEN) {
        let d = p
            .get(at..at + CSCD_LEN)
            .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
        if d[0] != CSCD_IDENTIFICATION {
            return Err(Sense::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE);
        }
        // LU ID TYPE and NUL are ignored (SPC-4 made them obsolete); the
        // peripheral device type must be a direct-access block device.
        if d[1] & 0x1f != 0x00 {
            return Err(Sense::INCORRECT_COPY_TARGET_DEVICE_TYPE);
        }
        if usize::from(d[7]) > 16 {
            return Err(Sense::invalid_param_field((at + 7) as u16, None));
        }
        let mut designator = [0u8; 20];
        designator.copy_from_slice(&d[4..24]);
        let block_length = be32_at(d, 28) & 0x00ff_ffff;
        cscds.push((designator, block_length));
    }
    let mut segments = Vec::new();
    let end = HEADER_LEN + cscd_len + seg_len;
    let mut at = HEADER_LEN + cscd_len;
    while at < end {
        if segments.len() >= usize::from(MAX_SEGMENT_DESCRIPTORS) {
            return Err(Sense::TOO_MANY_SEGMENT_DESCRIPTORS);
        }
        let hdr = p
            .get(at..at + 4)
            .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
        let len = 4 + usize::from(be16_at(hdr, 2));
        if at + len > end {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        if hdr[0] != SEGMENT_BLOCK_TO_BLOCK {
            return Err(Sense::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE);
        }
        if len != B2B_LEN {
            return Err(Sense::invalid_param_field((at + 2) as u16, None));
        }
        let d = &p[at..at + len];
        segments.push(Segment {
            dc: d[1] & 0x02 != 0,
            src: usize::from(be16_at(d, 4)),
            dst: usize::from(be16_at(d, 6)),
            blocks: be16_at(d, 10),
            src_lba: be64_at(d, 12),
            dst_lba: be64_at(d, 20),
        });
        at += len;
    }
    Ok(CopyList {
        list_id,
        held,
        cscds,
        segments,
    })
}

/// Resolve a CSCD descriptor to a logical unit the nexus may use that way.
fn unit(
    list: &CopyList,
    index: usize,
    ctx: &Ctx,
    access: Access,
) -> Result<Arc<LogicalUnit>, Sense> {
    let (designator, block_length) = list
        .cscds
        .get(index)
        .ok_or(Sense::COPY_TARGET_DEVICE_NOT_REACHABLE)?;
    let lu = find(designator).ok_or(Sense::COPY_TARGET_DEVICE_NOT_REACHABLE)?;
    if *block_length != lu.block_size() {
        return Err(Sense::invalid_param_field(
            (HEADER_LEN + index * CSCD_LEN + 29) as u16,
            None,
        ));
    }
    if lu.sanitizer().refusal(true).is_some() || lu.stopped() {
        return Err(Sense::COPY_TARGET_DEVICE_NOT_REACHABLE);
    }
    if !lu.access_allowed(ctx.nexus, access) {
        return Err(Sense::COPY_TARGET_DEVICE_NOT_REACHABLE);
    }
    if access == Access::Write && lu.read_only() {
        return Err(Sense::COPY_ABORTED_WRITE_PROTECTED);
    }
    Ok(lu)
}

/// Process the segments in order.
fn run(lu: &LogicalUnit, ctx: &Ctx, list: &CopyList, progress: &mut Progress) -> Result<(), Sense> {
    for (i, seg) in list.segments.iter().enumerate() {
        let src = unit(list, seg.src, ctx, Access::Read)?;
        let dst = unit(list, seg.dst, ctx, Access::Write)?;
        let unit_len = u64::from(if seg.dc {
            dst.block_size()
        } else {
            src.block_size()
        });
        let bytes = u64::from(seg.blocks) * unit_len;
        if bytes == 0 {
            progress.segments += 1;
            continue;
        }
        if bytes > u64::from(MAX_SEGMENT_LENGTH) {
            return Err(Sense::invalid_param_field(
                (HEADER_LEN + list.cscds.len() * CSCD_LEN + i * B2B_LEN + 10) as u16,
                None,
            ));
        }
        let (sbs, dbs) = (u64::from(src.block_size()), u64::from(dst.block_size()));
        if bytes % sbs != 0 || bytes % dbs != 0 {
            return Err(Sense::UNEXPECTED_INEXACT_SEGMENT);
        }
        let (src_off, _) = src
            .byte_range(seg.src_lba, bytes / sbs)
            .map_err(|_| Sense::COPY_ABORTED.with_information(i as u64))?;
        let (dst_off, _) = dst
            .byte_range(seg.dst_lba, bytes / dbs)
            .map_err(|_| Sense::COPY_ABORTED.with_information(i as u64))?;
        let range = BlockRange::new(seg.dst_lba, bytes / dbs);
        dst.writes().begin(range);
        let copied =
            crate::backstore::copy(src.backstore(), dst.backstore(), src_off, dst_off, bytes);
        let copied = copied.and_then(|()| {
            if dst.write_cache() {
                Ok(())
            } else {
                dst.backstore().flush()
            }
        });
        dst.writes().end(range);
        if let Err(e) = copied {
            warn!(
                "{}: EXTENDED COPY segment {i} to {} failed: {e}",
                lu.backstore().path().display(),
                dst.backstore().path().display()
            );
            return Err(Sense::THIRD_PARTY_DEVICE_FAILURE.with_information(i as u64));
        }
        progress.segments += 1;
        progress.bytes += bytes;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// RECEIVE COPY RESULTS (LID1) and operating parameters.

/// RECEIVE COPY STATUS (LID1), service action 00h (SPC-4 6.18.2).
pub(crate) fn receive_copy_status(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let alloc = ctx.cdb.be32(10) as usize;
    let r = lu
        .copies()
        .get(ctx.nexus.id, ctx.cdb.byte(2))
        .ok_or_else(|| Sense::invalid_cdb_field(2, None))?;
    // COPY MANAGER STATUS: 00h running, 01h done, 02h done with an error.
    let status = match (r.running, &r.failure) {
        (true, _) => 0x00,
        (false, None) => 0x01,
        (false, Some(_)) => 0x02,
    };
    // TRANSFER COUNT in bytes (units 00h), or KiB (01h) past 4 GiB.
    let (units, count) = match u32::try_from(r.bytes) {
        Ok(b) => (0x00, b),
        Err(_) => (0x01, u32::try_from(r.bytes >> 10).unwrap_or(u32::MAX)),
    };
    let mut d = vec![0, 0, 0, 8, status];
    d.extend_from_slice(&r.segments_done.to_be_bytes());
    d.push(units);
    d.extend_from_slice(&count.to_be_bytes());
    d.truncate(alloc);
    Ok(Outcome::Done(Response::good(d)))
}

/// RECEIVE COPY FAILURE DETAILS (LID1), service action 04h (SPC-4 6.18.4).
pub(crate) fn receive_copy_failure_details(
    lu: &LogicalUnit,
    ctx: &mut Ctx,
) -> Result<Outcome, Failure> {
    let alloc = ctx.cdb.be32(10) as usize;
    let r = lu
        .copies()
        .get(ctx.nexus.id, ctx.cdb.byte(2))
        .filter(|r| !r.running)
        .ok_or_else(|| Sense::invalid_cdb_field(2, None))?;
    let d = match r.failure {
        // A copy that did not fail has no details: AVAILABLE DATA 0.
        None => vec![0u8; 4],
        Some(sense) => {
            let mut d = vec![0u8; 60];
            d[56] = super::Status::CheckCondition as u8; // COPY COMMAND STATUS
            d[58..60].copy_from_slice(&(sense.len() as u16).to_be_bytes());
            d.extend_from_slice(&sense);
            let n = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&n.to_be_bytes());
            d
        }
    };
    let mut d = d;
    d.truncate(alloc);
    Ok(Outcome::Done(Response::good(d)))
}

/// RECEIVE COPY OPERATING PARAMETERS, service action 03h (SPC-4 6.18.3).
pub(crate) fn receive_copy_operating_parameters(
    lu: &LogicalUnit,
    ctx: &mut Ctx,
) -> Result<Outcome, Failure> {
    let alloc = ctx.cdb.be32(10) as usize;
    let mut d = vec![0u8; 44];
    d[4] = 0x01; // SNLID: LIST ID USAGE 11b (no list identifier) is supported
    d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&MAX_SEGMENT_LENGTH.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE
    // TRANSFER SIZE: 0 (bytes 20-31).
    d[34..36].copy_from_slice(&(HELD_RESULTS as u16).to_be_bytes()); // TOTAL CONCURRENT COPIES
    d[36] = HELD_RESULTS as u8; // MAXIMUM CONCURRENT COPIES
    d[37] = lu.block_size().trailing_zeros() as u8; // DATA SEGMENT GRANULARITY (log2 bytes)
                                                    // INLINE and HELD DATA GRANULARITY 0; IMPLEMENTED DESCRIPTOR LIST.
    d[43] = 2;
    d.extend_from_slice(&[SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION]);
    let n = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&n.to_be_bytes());
    d.truncate(alloc);
    Ok(Outcome::Done(Response::good(d)))
}

/// The Third-party Copy VPD page body (SPC-4 7.8.17) for a copy manager
/// of EXTENDED COPY (LID1) only: the commands, the parameter data, the
/// descriptors, no CSCD descriptor IDs past the list indexes, and the
/// general copy operations.
pub(crate) fn third_party_copy_page(block_size: u32) -> Vec<u8> {
    let mut d = Vec::new();
    let mut descriptor = |kind: u16, body: &[u8]| {
        // Each descriptor's length is a multiple of 4.
        let padded = body.len().div_ceil(4) * 4;
        d.extend_from_slice(&kind.to_be_bytes());
        d.extend_from_slice(&(padded as u16).to_be_bytes());
        d.extend_from_slice(body);
        d.resize(d.len() + padded - body.len(), 0);
    };
    // Supported Commands: 83h with service action 00h; 84h with 00h, 03h, 04h.
    let commands = [0x83, 1, 0x00, 0x84, 3, 0x00, 0x03, 0x04];
    let mut body = vec![commands.len() as u8];
    body.extend_from_slice(&commands);
    descriptor(0x0001, &body);
    // Parameter Data.
    let mut body = vec![0u8; 28];
    body[4..6].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    body[6..8].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    body[8..12].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    descriptor(0x0004, &body);
    // Supported Descriptors.
    descriptor(0x0008, &[2, SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION]);
    // Supported CSCD Descriptor IDs: none.
    descriptor(0x000c, &[0, 0]);
    // General Copy Operations.
    let mut body = vec![0u8; 32];
    body[0..4].copy_from_slice(&(HELD_RESULTS as u32).to_be_bytes());
    body[4..8].copy_from_slice(&(HELD_RESULTS as u32).to_be_bytes());
    body[8..12].copy_from_slice(&MAX_SEGMENT_LENGTH.to_be_bytes());
    body[12] = block_size.trailing_zeros() as u8;
    descriptor(0x8001, &body);
    d
}
