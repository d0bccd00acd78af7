// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SPC-4 primary commands: INQUIRY and its VPD pages, REPORT LUNS, REQUEST
//! SENSE, TEST UNIT READY, REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.

use super::command::{Ctx, Failure, Outcome, Response};
use super::limits::{
    max_write_same_blocks, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BYTES, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS,
};
use super::lu::LogicalUnit;
use super::lun::encode_lun;
use super::sense::Sense;

/// T10 vendor identification (8 bytes, space padded) and product data.
pub const VENDOR: &[u8; 8] = b"VUSCSI  ";
pub const PRODUCT: &[u8; 16] = b"vhost-user-scsi ";
pub const REVISION: &[u8; 4] = b"0001";

fn done(data: Vec<u8>, alloc: usize) -> Result<Outcome, Failure> {
    let mut data = data;
    data.truncate(alloc);
    Ok(Outcome::Done(Response::good(data)))
}

pub(crate) fn test_unit_ready(_lu: &LogicalUnit, _ctx: &mut Ctx) -> Result<Outcome, Failure> {
    Ok(Outcome::Done(Response::good(Vec::new())))
}

/// REQUEST SENSE (SPC-4 6.39): a pending unit attention (which is then
/// cleared), a sanitize operation's progress or failure (SBC-4 4.11), NOT
/// READY while stopped, otherwise NO SENSE.
pub(crate) fn request_sense(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let desc = ctx.cdb.bit(1, 0);
    let (sense, progress) = if let Some(ua) = lu.take_ua(ctx.nexus.id) {
        (ua, None)
    } else if let Some(state) = lu.sanitizer().request_sense() {
        state
    } else if lu.stopped() {
        (Sense::NOT_READY_INITIALIZING_COMMAND_REQUIRED, None)
    } else {
        (Sense::NO_ADDITIONAL_SENSE, None)
    };
    let data = match progress {
        Some(p) => sense.encode_with_progress(desc, p),
        None => sense.encode(desc),
    };
    done(data, usize::from(ctx.cdb.byte(4)))
}

/// REQUEST SENSE addressed to a LUN that does not exist (SPC-4 6.39: GOOD
/// status with LOGICAL UNIT NOT SUPPORTED in the sense data).
pub(crate) fn request_sense_no_lun(ctx: &Ctx) -> Response {
    let desc = ctx.cdb.bit(1, 0);
    let mut data = Sense::LOGICAL_UNIT_NOT_SUPPORTED.encode(desc);
    data.truncate(usize::from(ctx.cdb.byte(4)));
    Response::good(data)
}

/// Standard INQUIRY data (SPC-4 6.6.2) with the given peripheral byte.
fn standard_inquiry(peripheral: u8) -> Vec<u8> {
    let mut d = vec![0u8; 74];
    d[0] = peripheral;
    d[2] = 0x06; // VERSION: SPC-4
    d[3] = 0x12; // HISUP, RESPONSE DATA FORMAT 2
    d[4] = (d.len() - 5) as u8;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(PRODUCT);
    d[32..36].copy_from_slice(REVISION);
    // Version descriptors (SPC-4 table 148): SAM-5, SPC-4, SBC-3.
    for (i, v) in [0x00a0u16, 0x0460, 0x04c0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// Check the INQUIRY CDB; Some(page) when EVPD is set.
fn inquiry_page(ctx: &Ctx) -> Result<Option<u8>, Sense> {
    if ctx.cdb.bit(1, 1) {
        // CMDDT is obsolete (SPC-4 6.6.1): reject.
        return Err(Sense::invalid_cdb_field(1, Some(1)));
    }
    let evpd = ctx.cdb.bit(1, 0);
    let page = ctx.cdb.byte(2);
    if !evpd && page != 0 {
        return Err(Sense::invalid_cdb_field(2, None));
    }
    Ok(evpd.then_some(page))
}

/// INQUIRY for a LUN with no logical unit: peripheral qualifier 011b, device
/// type 1Fh (SPC-4 6.6.2, table 141).
pub(crate) fn inquiry_no_lun(ctx: &Ctx) -> Result<Response, Sense> {
    let alloc = usize::from(ctx.cdb.be16(3));
    match inquiry_page(ctx)? {
        None => {
            let mut d = standard_inquiry(0x7f);
            d.truncate(alloc);
            Ok(Response::good(d))
        }
        Some(_) => Err(Sense::LOGICAL_UNIT_NOT_SUPPORTED),
    }
}

/// VPD pages we return, in ascending order (SPC-4 7.8.14).
const VPD_PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2];

pub(crate) fn inquiry(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let alloc = usize::from(ctx.cdb.be16(3));
    let page = match inquiry_page(ctx)? {
        None => {
            let mut d = standard_inquiry(0x00);
            d[5] |= 0x10; // TPGS 01b: implicit asymmetric access (ALUA)
            d[5] |= 0x08; // 3PC: a copy manager (EXTENDED COPY)
            return done(d, alloc);
        }
        Some(p) => p,
    };
    let body = match page {
        0x00 => VPD_PAGES.to_vec(),
        0x80 => lu.identity().serial.as_bytes().to_vec(),
        0x83 => device_identification(lu, ctx.nexus.relative_port),
        0x8f => super::xcopy::third_party_copy_page(lu.block_size()),
        0xb0 => block_limits(lu),
        0xb1 => block_device_characteristics(),
        0xb2 => logical_block_provisioning(lu),
        _ => return Err(Sense::invalid_cdb_field(2, None).into()),
    };
    let mut d = vec![0x00, page];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    done(d, alloc)
}

/// Device identification VPD page body (SPC-4 7.8.6): the LU's NAA and T10
/// vendor ID designators (identical on every controller exposing the LU) and
/// the relative target port the command came through.
fn device_identification(lu: &LogicalUnit, relative_port: u16) -> Vec<u8> {
    let id = lu.identity();
    let mut d = Vec::new();
    // NAA: code set binary (1), association LU (0), designator type NAA (3).
    d.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
    d.extend_from_slice(&id.naa.to_be_bytes());
    // T10 vendor ID: code set ASCII (2), association LU, type 1.
    let t10: Vec<u8> = VENDOR.iter().chain(id.serial.as_bytes()).copied().collect();
    d.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    d.extend_from_slice(&t10);
    // Relative target port: code set binary, PIV=0, association target
    // port (01b), designator type 4.
    d.extend_from_slice(&[0x01, 0x14, 0x00, 0x04, 0x00, 0x00]);
    d.extend_from_slice(&relative_port.to_be_bytes());
    // Target port group: code set binary, PIV=0, association target port,
    // designator type 5 (SPC-4 7.8.6.5): what multipath tools pair with
    // REPORT TARGET PORT GROUPS.
    d.extend_from_slice(&[0x01, 0x15, 0x00, 0x04, 0x00, 0x00]);
    d.extend_from_slice(&lu.port_group(relative_port).id.to_be_bytes());
    d
}

/// Block limits VPD page body (SBC-3 6.5.3), 3Ch bytes.
fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    let bs = u64::from(lu.block_size());
    let mut d = vec![0u8; 0x3c];
    d[0] = 0x01; // WSNZ: WRITE SAME with zero blocks is rejected
    d[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
    let granularity = (4096 / bs).max(1) as u16;
    d[2..4].copy_from_slice(&granularity.to_be_bytes());
    d[4..8].copy_from_slice(&((MAX_TRANSFER_BYTES / bs) as u32).to_be_bytes());
    d[8..12].copy_from_slice(&((1u64 << 20) / bs).to_be_bytes()[4..8]);
    // A thin LU punches holes; a block device discards.
    let can_unmap = lu.thin() || lu.backstore().kind() == crate::backstore::Kind::Block;
    if can_unmap && lu.backstore().can_deallocate() {
        d[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
        d[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        d[24..28].copy_from_slice(&u32::from(granularity).to_be_bytes());
    }
    d[32..40].copy_from_slice(&max_write_same_blocks(lu.block_size()).to_be_bytes());
    if let Some(a) = lu.atomic_limits() {
        // MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC ALIGNMENT, ATOMIC TRANSFER
        // LENGTH GRANULARITY; no atomic boundaries (the two fields after).
        d[40..44].copy_from_slice(&a.max_blocks.to_be_bytes());
        d[44..48].copy_from_slice(&a.align.to_be_bytes());
        d[48..52].copy_from_slice(&a.granularity.to_be_bytes());
    }
    d
}

/// Block device characteristics VPD page body (SBC-4 6.6.2): non-rotating.
fn block_device_characteristics() -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    d[0..2].copy_from_slice(&1u16.to_be_bytes()); // MEDIUM ROTATION RATE: non-rotating
                                                  // WABEREQ 01b: a read of a block a SANITIZE BLOCK ERASE deallocated
                                                  // completes with GOOD (it reads zeros); WACEREQ 00b: no CRYPTOGRAPHIC
                                                  // ERASE.
    d[3] = 0x40;
    d
}

/// Logical block provisioning VPD page body (SBC-3 6.5.4).
fn logical_block_provisioning(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    if lu.thin() {
        // LBPU, LBPWS, LBPWS10, LBPRZ (holes read as zeros).
        d[1] = 0x80 | 0x40 | 0x20 | 0x04;
        d[2] = 0x02; // PROVISIONING TYPE: thin
    }
    d
}

/// REPORT LUNS (SPC-4 6.33).
pub(crate) fn report_luns(_lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    Ok(Outcome::Done(report_luns_for(ctx)?))
}

/// REPORT LUNS for any LUN address, including absent and well-known LUNs.
pub(crate) fn report_luns_for(ctx: &Ctx) -> Result<Response, Sense> {
    let alloc = ctx.cdb.be32(6) as usize;
    if alloc < 16 {
        return Err(Sense::invalid_cdb_field(6, None));
    }
    let mut luns: Vec<[u8; 8]> = Vec::new();
    match ctx.cdb.byte(2) {
        0x00 => luns.extend(ctx.luns.iter().map(|&l| encode_lun(l))),
        0x01 => luns.push(super::lun::REPORT_LUNS_WLUN),
        0x02 => {
            luns.extend(ctx.luns.iter().map(|&l| encode_lun(l)));
            luns.push(super::lun::REPORT_LUNS_WLUN);
        }
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    }
    let mut d = Vec::with_capacity(8 + 8 * luns.len());
    d.extend_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for l in luns {
        d.extend_from_slice(&l);
    }
    d.truncate(alloc);
    Ok(Response::good(d))
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.40): ABORT TASK,
/// ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, QUERY TASK,
/// QUERY TASK SET, I_T NEXUS RESET. CLEAR ACA is not supported.
pub(crate) fn report_supported_tmfs(_lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let repd = ctx.cdb.bit(2, 7);
    let alloc = ctx.cdb.be32(6) as usize;
    // ATS | ATSS | CTSS | LURS | QTS; QTSS | ITNRS.
    let mut d = vec![0x80 | 0x40 | 0x10 | 0x08 | 0x04, 0x02 | 0x01, 0, 0];
    if repd {
        d[3] = 0x0c;
        d.resize(16, 0);
    }
    done(d, alloc)
}

/// Supported states (byte 1 of a descriptor): U_SUP, S_SUP, AN_SUP, AO_SUP.
const ALUA_SUPPORTED_STATES: u8 = 0x0f;

/// REPORT TARGET PORT GROUPS (SPC-4 6.36).
pub(crate) fn report_target_port_groups(
    lu: &LogicalUnit,
    ctx: &mut Ctx,
) -> Result<Outcome, Failure> {
    let format = ctx.cdb.byte(1) >> 5;
    let alloc = ctx.cdb.be32(6) as usize;
    let header = match format {
        0b000 => 4,
        // Extended header: FORMAT TYPE 001b, IMPLICIT TRANSITION TIME 0
        // (states change only by configuration, never in transition).
        0b001 => 8,
        _ => return Err(Sense::invalid_cdb_field(1, Some(7)).into()),
    };
    let mut d = vec![0u8; header];
    if format == 0b001 {
        d[4] = 0x10;
    }
    for g in lu.port_groups(ctx.nexus.relative_port) {
        d.push(g.state as u8); // PREF 0, ASYMMETRIC ACCESS STATE
        d.push(ALUA_SUPPORTED_STATES);
        d.extend_from_slice(&g.id.to_be_bytes()); // TARGET PORT GROUP
        d.push(0); // reserved
        d.push(0); // STATUS CODE: no status available
        d.push(0); // vendor specific
        d.push(1); // TARGET PORT COUNT
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(&g.relative_port.to_be_bytes());
    }
    // RETURN DATA LENGTH: what follows the first four bytes.
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    d.truncate(alloc);
    Ok(Outcome::Done(Response::good(d)))
}
