// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The one table of supported commands. It drives dispatch, the reserved-bit
//! check (a CDB bit outside the usage mask is INVALID FIELD IN CDB), and
//! REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), so they cannot disagree.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

use super::cdb::{Cdb, Layout};
use super::command::{Ctx, Failure, Outcome, Response};
use super::lu::LogicalUnit;
use super::pr::Access;
use super::sense::Sense;
use super::{mode, reservations, sanitize, sbc, spc, xcopy};

pub(crate) type Handler = fn(&LogicalUnit, &mut Ctx) -> Result<Outcome, Failure>;

/// Command needs the medium: NOT READY while the unit is stopped.
pub(crate) const MEDIA: u16 = 1 << 0;
/// Command is not failed by a pending unit attention: INQUIRY, REPORT LUNS
/// and REQUEST SENSE (SAM-5 5.14). [`unit_attention_exempt`] reads it.
const NO_UA: u16 = 1 << 1;
/// Command modifies the medium: DATA PROTECT on a read-only unit.
pub(crate) const WRITES: u16 = 1 << 2;
/// Command must not run while other writes to its blocks are in flight.
pub(crate) const EXCLUSIVE: u16 = 1 << 3;
/// Never conflicts with a reservation (SPC-4 table 62 "Allowed").
pub(crate) const PR_ALLOWED: u16 = 1 << 4;
/// Conflicts like a read (allowed under Write Exclusive types). Commands
/// with neither PR flag conflict like writes.
pub(crate) const PR_READ: u16 = 1 << 5;
/// Processed while a sanitize operation runs (SBC-4 4.11: INQUIRY, REPORT
/// LUNS, REQUEST SENSE); every other command gets SANITIZE IN PROGRESS.
pub(crate) const SANITIZE_OK: u16 = 1 << 6;
/// Offered only by a logical unit that can write atomically
/// (`LogicalUnit::atomic_limits`); elsewhere it is an unsupported opcode,
/// and REPORT SUPPORTED OPERATION CODES says so.
pub(crate) const NEEDS_ATOMIC: u16 = 1 << 7;

/// Allowed through a target port in the standby / unavailable ALUA state
/// (SPC-4 5.15.2.4.4-5); everything else is NOT READY there.
pub(crate) const ALUA_STANDBY_OK: u16 = 1 << 8;
pub(crate) const ALUA_UNAVAILABLE_OK: u16 = 1 << 9;
/// Both: INQUIRY, REPORT LUNS, REQUEST SENSE, REPORT TARGET PORT GROUPS
/// and the two REPORT SUPPORTED commands.
const ALUA_ANY: u16 = ALUA_STANDBY_OK | ALUA_UNAVAILABLE_OK;

/// Whether `lu` offers the command of this table entry.
pub(crate) fn offered(lu: &LogicalUnit, info: &OpInfo) -> bool {
    info.flags & NEEDS_ATOMIC == 0 || lu.atomic_limits().is_some()
}

/// Whether a pending unit attention leaves the command of this table entry
/// alone.
pub(crate) fn ua_exempt(info: &OpInfo) -> bool {
    info.flags & NO_UA != 0
}

/// Whether a pending unit attention leaves `cdb` alone (SAM-5 5.14: INQUIRY,
/// REPORT LUNS and REQUEST SENSE), for a transport that keeps its own unit
/// attentions. A command the table does not know is not exempt.
pub fn unit_attention_exempt(cdb: &[u8]) -> bool {
    lookup(&Cdb::new(cdb)).is_ok_and(ua_exempt)
}

/// How a command is treated in the presence of a reservation.
pub(crate) fn access(info: &OpInfo) -> Access {
    if info.flags & PR_ALLOWED != 0 {
        Access::Allowed
    } else if info.flags & PR_READ != 0 {
        Access::Read
    } else {
        Access::Write
    }
}

pub(crate) struct OpInfo {
    pub opcode: u8,
    /// Service action, for opcodes that have them (bits 4-0 of byte 1).
    pub sa: Option<u16>,
    pub name: &'static str,
    /// CDB usage data (SPC-4 6.35.3): byte 0 is the opcode, the service
    /// action field holds the service action, every other bit set is a bit
    /// the device server evaluates. Its length is the CDB length.
    pub usage: &'static [u8],
    pub flags: u16,
    /// Where a block command's LBA and length sit in its CDB.
    pub layout: Option<Layout>,
    pub handler: Handler,
}

macro_rules! op {
    ($op:literal, $sa:expr, $name:literal, [$($u:literal),*], $flags:expr, $layout:ident, $h:path) => {
        OpInfo { opcode: $op, sa: $sa, name: $name, usage: &[$($u),*], flags: $flags, layout: Some(Layout::$layout), handler: $h }
    };
    ($op:literal, $sa:expr, $name:literal, [$($u:literal),*], $flags:expr, $h:path) => {
        OpInfo { opcode: $op, sa: $sa, name: $name, usage: &[$($u),*], flags: $flags, layout: None, handler: $h }
    };
}

/// Control byte: NACA (bit 2) is evaluated (and rejected); LINK is obsolete
/// and therefore not in any usage mask.
#[rustfmt::skip]
pub(crate) static OPCODES: &[OpInfo] = &[
    op!(0x00, None, "TEST UNIT READY", [0x00, 0, 0, 0, 0, 0x04], MEDIA | PR_ALLOWED, spc::test_unit_ready),
    op!(0x03, None, "REQUEST SENSE", [0x03, 0x01, 0, 0, 0xff, 0x04], NO_UA | SANITIZE_OK | PR_ALLOWED | ALUA_ANY, spc::request_sense),
    op!(0x08, None, "READ(6)", [0x08, 0x1f, 0xff, 0xff, 0xff, 0x04], MEDIA | PR_READ, Six, sbc::read),
    op!(0x0a, None, "WRITE(6)", [0x0a, 0x1f, 0xff, 0xff, 0xff, 0x04], MEDIA | WRITES, Six, sbc::write),
    op!(0x12, None, "INQUIRY", [0x12, 0x03, 0xff, 0xff, 0xff, 0x04], NO_UA | SANITIZE_OK | PR_ALLOWED | ALUA_ANY, spc::inquiry),
    op!(0x15, None, "MODE SELECT(6)", [0x15, 0x11, 0, 0, 0xff, 0x04], ALUA_STANDBY_OK, mode::mode_select),
    op!(0x16, None, "RESERVE(6)", [0x16, 0, 0, 0, 0, 0x04], PR_ALLOWED, reservations::reserve6),
    op!(0x17, None, "RELEASE(6)", [0x17, 0, 0, 0, 0, 0x04], PR_ALLOWED, reservations::release6),
    op!(0x1a, None, "MODE SENSE(6)", [0x1a, 0x08, 0xff, 0xff, 0xff, 0x04], PR_READ | ALUA_STANDBY_OK, mode::mode_sense),
    op!(0x1b, None, "START STOP UNIT", [0x1b, 0x01, 0, 0, 0xf7, 0x04], 0, sbc::start_stop_unit),
    op!(0x1e, None, "PREVENT ALLOW MEDIUM REMOVAL", [0x1e, 0, 0, 0, 0x03, 0x04], 0, sbc::prevent_allow),
    op!(0x25, None, "READ CAPACITY(10)", [0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0x04], MEDIA | PR_ALLOWED, sbc::read_capacity10),
    op!(0x28, None, "READ(10)", [0x28, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04], MEDIA | PR_READ, Ten, sbc::read),
    op!(0x2a, None, "WRITE(10)", [0x2a, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04], MEDIA | WRITES, Ten, sbc::write),
    op!(0x2e, None, "WRITE AND VERIFY(10)", [0x2e, 0xf2, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04], MEDIA | WRITES | EXCLUSIVE, Ten, sbc::write_and_verify),
    op!(0x2f, None, "VERIFY(10)", [0x2f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04], MEDIA | PR_READ, Ten, sbc::verify),
    op!(0x34, None, "PRE-FETCH(10)", [0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04], MEDIA | PR_READ, Ten, sbc::prefetch),
    op!(0x35, None, "SYNCHRONIZE CACHE(10)", [0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04], MEDIA, Ten, sbc::synchronize_cache),
    op!(0x37, None, "READ DEFECT DATA(10)", [0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0x04], MEDIA | PR_READ, sbc::read_defect_data),
    op!(0x41, None, "WRITE SAME(10)", [0x41, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04], MEDIA | WRITES | EXCLUSIVE, Ten, sbc::write_same),
    op!(0x42, None, "UNMAP", [0x42, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x04], MEDIA | WRITES | EXCLUSIVE, sbc::unmap),
    op!(0x48, Some(0x01), "SANITIZE (OVERWRITE)", [0x48, 0xe1, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], MEDIA | WRITES | EXCLUSIVE, sanitize::sanitize),
    op!(0x48, Some(0x02), "SANITIZE (BLOCK ERASE)", [0x48, 0xe2, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], MEDIA | WRITES | EXCLUSIVE, sanitize::sanitize),
    op!(0x48, Some(0x1f), "SANITIZE (EXIT FAILURE MODE)", [0x48, 0xff, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], MEDIA | WRITES | EXCLUSIVE, sanitize::sanitize),
    op!(0x55, None, "MODE SELECT(10)", [0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], ALUA_STANDBY_OK, mode::mode_select),
    op!(0x56, None, "RESERVE(10)", [0x56, 0x12, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], PR_ALLOWED, reservations::reserve10),
    op!(0x57, None, "RELEASE(10)", [0x57, 0x12, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], PR_ALLOWED, reservations::release10),
    op!(0x5a, None, "MODE SENSE(10)", [0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x04], PR_READ | ALUA_STANDBY_OK, mode::mode_sense),
    op!(0x5e, Some(0), "PERSISTENT RESERVE IN (READ KEYS)", [0x5e, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_in),
    op!(0x5e, Some(1), "PERSISTENT RESERVE IN (READ RESERVATION)", [0x5e, 1, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_in),
    op!(0x5e, Some(2), "PERSISTENT RESERVE IN (REPORT CAPABILITIES)", [0x5e, 2, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_in),
    op!(0x5e, Some(3), "PERSISTENT RESERVE IN (READ FULL STATUS)", [0x5e, 3, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_in),
    op!(0x5f, Some(0), "PERSISTENT RESERVE OUT (REGISTER)", [0x5f, 0, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_out),
    op!(0x5f, Some(1), "PERSISTENT RESERVE OUT (RESERVE)", [0x5f, 1, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_out),
    op!(0x5f, Some(2), "PERSISTENT RESERVE OUT (RELEASE)", [0x5f, 2, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_out),
    op!(0x5f, Some(3), "PERSISTENT RESERVE OUT (CLEAR)", [0x5f, 3, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_out),
    op!(0x5f, Some(4), "PERSISTENT RESERVE OUT (PREEMPT)", [0x5f, 4, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_out),
    op!(0x5f, Some(5), "PERSISTENT RESERVE OUT (PREEMPT AND ABORT)", [0x5f, 5, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_out),
    op!(0x5f, Some(6), "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)", [0x5f, 6, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_out),
    op!(0x5f, Some(7), "PERSISTENT RESERVE OUT (REGISTER AND MOVE)", [0x5f, 7, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04], PR_ALLOWED | ALUA_STANDBY_OK, reservations::persistent_reserve_out),
    op!(0x83, Some(0x00), "EXTENDED COPY(LID1)", [0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04], MEDIA | EXCLUSIVE, xcopy::extended_copy),
    op!(0x84, Some(0x00), "RECEIVE COPY STATUS(LID1)", [0x84, 0x00, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04], PR_READ, xcopy::receive_copy_status),
    op!(0x84, Some(0x03), "RECEIVE COPY OPERATING PARAMETERS", [0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04], PR_READ, xcopy::receive_copy_operating_parameters),
    op!(0x84, Some(0x04), "RECEIVE COPY FAILURE DETAILS(LID1)", [0x84, 0x04, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04], PR_READ, xcopy::receive_copy_failure_details),
    op!(0x88, None, "READ(16)", [0x88, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | PR_READ, Sixteen, sbc::read),
    op!(0x89, None, "COMPARE AND WRITE", [0x89, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0x04], MEDIA | WRITES | EXCLUSIVE, CompareAndWrite, sbc::compare_and_write),
    op!(0x8a, None, "WRITE(16)", [0x8a, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | WRITES, Sixteen, sbc::write),
    op!(0x8b, None, "ORWRITE(16)", [0x8b, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | WRITES | EXCLUSIVE, Sixteen, sbc::orwrite),
    op!(0x8e, None, "WRITE AND VERIFY(16)", [0x8e, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | WRITES | EXCLUSIVE, Sixteen, sbc::write_and_verify),
    op!(0x8f, None, "VERIFY(16)", [0x8f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | PR_READ, Sixteen, sbc::verify),
    op!(0x90, None, "PRE-FETCH(16)", [0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | PR_READ, Sixteen, sbc::prefetch),
    op!(0x91, None, "SYNCHRONIZE CACHE(16)", [0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA, Sixteen, sbc::synchronize_cache),
    op!(0x93, None, "WRITE SAME(16)", [0x93, 0xf9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | WRITES | EXCLUSIVE, Sixteen, sbc::write_same),
    op!(0x9c, None, "WRITE ATOMIC(16)", [0x9c, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | WRITES | EXCLUSIVE | NEEDS_ATOMIC, Atomic16, sbc::write_atomic16),
    op!(0x9e, Some(0x10), "READ CAPACITY(16)", [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04], MEDIA | PR_ALLOWED, sbc::read_capacity16),
    op!(0x9e, Some(0x12), "GET LBA STATUS", [0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x04], MEDIA | PR_READ, sbc::get_lba_status),
    op!(0xa0, None, "REPORT LUNS", [0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04], NO_UA | SANITIZE_OK | PR_ALLOWED | ALUA_ANY, spc::report_luns),
    op!(0xa3, Some(0x0a), "REPORT TARGET PORT GROUPS", [0xa3, 0xea, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04], PR_ALLOWED | ALUA_ANY, spc::report_target_port_groups),
    op!(0xa3, Some(0x0c), "REPORT SUPPORTED OPERATION CODES", [0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x04], PR_ALLOWED | ALUA_ANY, report_supported_opcodes),
    op!(0xa3, Some(0x0d), "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", [0xa3, 0x0d, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04], PR_ALLOWED | ALUA_ANY, spc::report_supported_tmfs),
    op!(0xa8, None, "READ(12)", [0xa8, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | PR_READ, Twelve, sbc::read),
    op!(0xaa, None, "WRITE(12)", [0xaa, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | WRITES, Twelve, sbc::write),
    op!(0xae, None, "WRITE AND VERIFY(12)", [0xae, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | WRITES | EXCLUSIVE, Twelve, sbc::write_and_verify),
    op!(0xaf, None, "VERIFY(12)", [0xaf, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04], MEDIA | PR_READ, Twelve, sbc::verify),
    op!(0xb7, None, "READ DEFECT DATA(12)", [0xb7, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x04], MEDIA | PR_READ, sbc::read_defect_data),
];

/// Opcodes whose service action is in byte 1, bits 4-0.
fn has_service_actions(opcode: u8) -> bool {
    OPCODES.iter().any(|o| o.opcode == opcode && o.sa.is_some())
}

/// Index of the first table entry of every opcode (u16::MAX: unsupported),
/// built once from the table so that dispatch does not scan it.
fn first_entry() -> &'static [u16; 256] {
    static INDEX: std::sync::OnceLock<[u16; 256]> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut idx = [u16::MAX; 256];
        for (i, o) in OPCODES.iter().enumerate().rev() {
            #[allow(clippy::indexing_slicing)] // a u8 indexes 256 entries
            let slot = &mut idx[usize::from(o.opcode)];
            *slot = i as u16;
        }
        idx
    })
}

/// Find the table entry for a CDB, or the sense to answer with.
pub(crate) fn lookup(cdb: &Cdb) -> Result<&'static OpInfo, Sense> {
    let op = cdb.opcode();
    #[allow(clippy::indexing_slicing)] // a u8 indexes 256 entries
    let first = first_entry()[usize::from(op)];
    let Some(entry) = OPCODES.get(usize::from(first)) else {
        return Err(Sense::INVALID_COMMAND_OPERATION_CODE);
    };
    if entry.sa.is_none() {
        return Ok(entry);
    }
    let sa = cdb.service_action();
    OPCODES
        .get(usize::from(first)..)
        .unwrap_or_default()
        .iter()
        .take_while(|o| o.opcode == op)
        .find(|o| o.sa == Some(sa))
        // SPC-4 4.2.5.1: unsupported service action of a supported opcode.
        .ok_or_else(|| Sense::invalid_cdb_field(1, Some(4)))
}

/// Check a CDB against its table entry, needing no logical unit: a bit
/// set outside the usage mask is INVALID FIELD IN CDB pointing at the
/// first such bit (SPC-4 4.2.5.1), and so is NACA, which the control byte's
/// usage allows only to refuse it (NORMACA is 0 in the INQUIRY data: SAM-5
/// 5.9).
pub(crate) fn check_cdb(info: &OpInfo, cdb: &Cdb) -> Result<(), Sense> {
    for (i, &mask) in info.usage.iter().enumerate().skip(1) {
        // The service action byte carries the SA in bits 4-0: compare as usage.
        let extra = cdb.byte(i) & !mask;
        if extra != 0 {
            let bit = 7 - extra.leading_zeros() as u8;
            return Err(Sense::invalid_cdb_field(i as u16, Some(bit)));
        }
    }
    let control = info.usage.len() - 1;
    if cdb.bit(control, 2) {
        return Err(Sense::invalid_cdb_field(control as u16, Some(2)));
    }
    Ok(())
}

/// The transport must quiesce its own in-flight writes before running this
/// command (it waits for other writers to the same blocks).
pub fn needs_exclusive_writes(cdb: &[u8]) -> bool {
    lookup(&Cdb::new(cdb)).is_ok_and(|o| o.flags & EXCLUSIVE != 0)
}

/// Command timeouts descriptor (SPC-4 6.35.4): no timeouts specified.
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).
fn report_supported_opcodes(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let rctd = ctx.cdb.bit(2, 7);
    let options = ctx.cdb.byte(2) & 0x07;
    let req_op = ctx.cdb.byte(3);
    let req_sa = ctx.cdb.be16(4);
    let alloc = ctx.cdb.be32(6) as usize;
    let mut out = Vec::new();
    match options {
        0 => {
            out.extend_from_slice(&[0; 4]);
            for o in OPCODES.iter().filter(|o| offered(lu, o)) {
                let [sa_hi, sa_lo] = o.sa.unwrap_or(0).to_be_bytes();
                let flags = u8::from(o.sa.is_some()) | if rctd { 0x02 } else { 0 };
                let [l_hi, l_lo] = (o.usage.len() as u16).to_be_bytes();
                out.extend_from_slice(&[o.opcode, 0, sa_hi, sa_lo, 0, flags, l_hi, l_lo]);
                if rctd {
                    out.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
                }
            }
            let len = (out.len() - 4) as u32;
            if let Some(header) = out.get_mut(..4) {
                header.copy_from_slice(&len.to_be_bytes());
            }
        }
        1..=3 => {
            let with_sa = has_service_actions(req_op);
            // Option 1 asks for an opcode without service actions; option 2
            // for one with; option 3 for either (SPC-4 table 260).
            match (options, with_sa) {
                (1, true) => return Err(Sense::invalid_cdb_field(3, None).into()),
                (2, false) => return Err(Sense::invalid_cdb_field(3, None).into()),
                _ => {}
            }
            if options == 1 && req_sa != 0 {
                return Err(Sense::invalid_cdb_field(4, None).into());
            }
            let found = OPCODES
                .iter()
                .find(|o| o.opcode == req_op && (!with_sa || o.sa == Some(req_sa)))
                .filter(|o| offered(lu, o));
            match found {
                Some(o) => {
                    let support = 0x03; // supported, in conformance with a standard
                    let ctdp = if rctd { 0x80 } else { 0 };
                    let [l_hi, l_lo] = (o.usage.len() as u16).to_be_bytes();
                    out.extend_from_slice(&[0, ctdp | support, l_hi, l_lo]);
                    out.extend_from_slice(o.usage);
                    if rctd {
                        out.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
                    }
                }
                // SUPPORT 001b: not supported; no CDB usage data.
                None => out.extend_from_slice(&[0, 0x01, 0, 0]),
            }
        }
        _ => return Err(Sense::invalid_cdb_field(2, Some(2)).into()),
    }
    out.truncate(alloc);
    Ok(Outcome::Done(Response::good(out)))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    #[test]
    fn table_has_no_duplicate_entries() {
        for (i, a) in OPCODES.iter().enumerate() {
            for b in &OPCODES[i + 1..] {
                assert!(
                    !(a.opcode == b.opcode && a.sa == b.sa),
                    "{} and {} collide",
                    a.name,
                    b.name
                );
            }
        }
    }

    #[test]
    fn usage_length_matches_group_code() {
        for o in OPCODES {
            let expected = match o.opcode >> 5 {
                0 => 6,
                1 | 2 => 10,
                4 => 16,
                5 => 12,
                _ => unreachable!("no such group in the table"),
            };
            assert_eq!(o.usage.len(), expected, "{}", o.name);
            assert_eq!(o.usage[0], o.opcode, "{}", o.name);
            if let Some(sa) = o.sa {
                assert_eq!(u16::from(o.usage[1] & 0x1f), sa, "{}", o.name);
            }
        }
    }

    #[test]
    fn entries_of_one_opcode_are_adjacent_and_in_opcode_order() {
        // lookup() relies on this.
        for w in OPCODES.windows(2) {
            assert!(
                w[0].opcode <= w[1].opcode,
                "{} before {}",
                w[0].name,
                w[1].name
            );
        }
    }

    #[test]
    fn every_entry_is_found_by_lookup() {
        for o in OPCODES {
            let mut cdb = [0u8; 16];
            cdb[0] = o.opcode;
            cdb[1] = o.sa.unwrap_or(0) as u8;
            let found = lookup(&Cdb::new(&cdb)).unwrap();
            assert_eq!(found.name, o.name);
        }
    }

    #[test]
    fn inquiry_report_luns_and_request_sense_are_exempt_from_unit_attentions() {
        // INQUIRY, allocation length 36.
        assert!(unit_attention_exempt(&[0x12, 0, 0, 0, 36, 0]));
        // REPORT LUNS, allocation length 16.
        assert!(unit_attention_exempt(&[
            0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0
        ]));
        // REQUEST SENSE, allocation length 18.
        assert!(unit_attention_exempt(&[0x03, 0, 0, 0, 18, 0]));
    }

    #[test]
    fn every_other_command_is_not_exempt_from_unit_attentions() {
        for op in (0..=255u8).filter(|op| ![0x03, 0x12, 0xa0].contains(op)) {
            let mut cdb = [0u8; 16];
            cdb[0] = op;
            for sa in 0..0x20 {
                cdb[1] = sa;
                assert!(!unit_attention_exempt(&cdb), "{op:#04x}/{sa:#04x}");
            }
        }
        // Not a command at all.
        assert!(!unit_attention_exempt(&[]));
    }

    #[test]
    fn reserved_bit_is_reported_with_its_position() {
        // TEST UNIT READY with byte 1 bit 5 set.
        let cdb = Cdb::new(&[0x00, 0x20, 0, 0, 0, 0]);
        let info = lookup(&cdb).unwrap();
        assert_eq!(
            check_cdb(info, &cdb),
            Err(Sense::invalid_cdb_field(1, Some(5)))
        );
    }

    #[test]
    fn naca_is_refused_without_a_logical_unit() {
        // READ(10) with NACA in its control byte (byte 9).
        let cdb = Cdb::new(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0x04]);
        let info = lookup(&cdb).unwrap();
        assert_eq!(
            check_cdb(info, &cdb),
            Err(Sense::invalid_cdb_field(9, Some(2)))
        );
    }

    /// Every command that addresses blocks names where its LBA and length
    /// are, the layout fits its CDB's length, and the usage mask lets every
    /// bit of those fields through (or the reserved-bit check would refuse
    /// a valid LBA); no other command has a layout.
    #[test]
    fn block_commands_and_only_they_name_a_layout_that_fits_their_cdb() {
        const BLOCK_COMMANDS: &[&str] = &[
            "READ(",
            "WRITE(",
            "VERIFY(",
            "WRITE AND VERIFY(",
            "PRE-FETCH(",
            "SYNCHRONIZE CACHE(",
            "WRITE SAME(",
            "ORWRITE(",
            "COMPARE AND WRITE",
            "WRITE ATOMIC(",
        ];
        for o in OPCODES {
            let block = BLOCK_COMMANDS.iter().any(|p| o.name.starts_with(p));
            assert_eq!(o.layout.is_some(), block, "{}", o.name);
            let Some(layout) = o.layout else { continue };
            let wanted = match layout {
                Layout::Six => 6,
                Layout::Ten => 10,
                Layout::Twelve => 12,
                _ => 16,
            };
            assert_eq!(o.usage.len(), wanted, "{}", o.name);
            for range in layout.field_bytes() {
                for i in range {
                    // The 6-byte LBA's top byte holds 5 bits of it.
                    let bits = if layout == Layout::Six && i == 1 {
                        0x1f
                    } else {
                        0xff
                    };
                    assert_eq!(o.usage[i] & bits, bits, "{} byte {i}", o.name);
                }
            }
        }
    }
}
