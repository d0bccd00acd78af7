// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The layouts against the byte offsets of RFC 7143's figures, and against
//! PDUs written out byte by byte.

#![allow(clippy::indexing_slicing)]

use std::mem::offset_of;

use super::*;
use crate::iscsi::pdu::Pdu;

#[test]
fn fields_are_at_the_rfc_offsets() {
    // 11.3 SCSI Command.
    assert_eq!(offset_of!(ScsiCommand, lun), 8);
    assert_eq!(offset_of!(ScsiCommand, itt), 16);
    assert_eq!(offset_of!(ScsiCommand, expected_data_transfer_length), 20);
    assert_eq!(offset_of!(ScsiCommand, cmd_sn), 24);
    assert_eq!(offset_of!(ScsiCommand, exp_stat_sn), 28);
    assert_eq!(offset_of!(ScsiCommand, cdb), 32);
    // 11.4 SCSI Response.
    assert_eq!(offset_of!(ScsiResponse, response), 2);
    assert_eq!(offset_of!(ScsiResponse, status), 3);
    assert_eq!(offset_of!(ScsiResponse, snack_tag), 20);
    assert_eq!(offset_of!(ScsiResponse, stat_sn), 24);
    assert_eq!(offset_of!(ScsiResponse, exp_data_sn), 36);
    assert_eq!(offset_of!(ScsiResponse, bidi_residual_count), 40);
    assert_eq!(offset_of!(ScsiResponse, residual_count), 44);
    // 11.5 and 11.6 task management.
    assert_eq!(offset_of!(TaskMgmtRequest, referenced_task_tag), 20);
    assert_eq!(offset_of!(TaskMgmtRequest, cmd_sn), 24);
    assert_eq!(offset_of!(TaskMgmtRequest, ref_cmd_sn), 32);
    assert_eq!(offset_of!(TaskMgmtRequest, exp_data_sn), 36);
    assert_eq!(offset_of!(TaskMgmtResponse, response), 2);
    assert_eq!(offset_of!(TaskMgmtResponse, stat_sn), 24);
    // 11.7 Data-Out and Data-In.
    assert_eq!(offset_of!(DataOut, ttt), 20);
    assert_eq!(offset_of!(DataOut, exp_stat_sn), 28);
    assert_eq!(offset_of!(DataOut, data_sn), 36);
    assert_eq!(offset_of!(DataOut, buffer_offset), 40);
    assert_eq!(offset_of!(DataIn, status), 3);
    assert_eq!(offset_of!(DataIn, ttt), 20);
    assert_eq!(offset_of!(DataIn, data_sn), 36);
    assert_eq!(offset_of!(DataIn, buffer_offset), 40);
    assert_eq!(offset_of!(DataIn, residual_count), 44);
    // 11.8 R2T.
    assert_eq!(offset_of!(R2t, r2t_sn), 36);
    assert_eq!(offset_of!(R2t, buffer_offset), 40);
    assert_eq!(offset_of!(R2t, desired_data_transfer_length), 44);
    // 11.9 Asynchronous Message.
    assert_eq!(offset_of!(AsyncMessage, async_event), 36);
    assert_eq!(offset_of!(AsyncMessage, async_vcode), 37);
    assert_eq!(offset_of!(AsyncMessage, parameter1), 38);
    assert_eq!(offset_of!(AsyncMessage, parameter2), 40);
    assert_eq!(offset_of!(AsyncMessage, parameter3), 42);
    // 11.10, 11.11 text.
    assert_eq!(offset_of!(TextRequest, ttt), 20);
    assert_eq!(offset_of!(TextResponse, max_cmd_sn), 32);
    // 11.12, 11.13 login.
    assert_eq!(offset_of!(LoginRequest, version_max), 2);
    assert_eq!(offset_of!(LoginRequest, isid), 8);
    assert_eq!(offset_of!(LoginRequest, tsih), 14);
    assert_eq!(offset_of!(LoginRequest, cid), 20);
    assert_eq!(offset_of!(LoginRequest, cmd_sn), 24);
    assert_eq!(offset_of!(LoginRequest, exp_stat_sn), 28);
    assert_eq!(offset_of!(LoginResponse, tsih), 14);
    assert_eq!(offset_of!(LoginResponse, status_class), 36);
    assert_eq!(offset_of!(LoginResponse, status_detail), 37);
    // 11.14, 11.15 logout.
    assert_eq!(offset_of!(LogoutRequest, cid), 20);
    assert_eq!(offset_of!(LogoutRequest, cmd_sn), 24);
    assert_eq!(offset_of!(LogoutResponse, response), 2);
    assert_eq!(offset_of!(LogoutResponse, time2wait), 40);
    assert_eq!(offset_of!(LogoutResponse, time2retain), 42);
    // 11.17 Reject.
    assert_eq!(offset_of!(Reject, reason), 2);
    assert_eq!(offset_of!(Reject, data_sn), 36);
    // 11.18, 11.19 NOP.
    assert_eq!(offset_of!(NopOut, ttt), 20);
    assert_eq!(offset_of!(NopOut, cmd_sn), 24);
    assert_eq!(offset_of!(NopIn, ttt), 20);
    assert_eq!(offset_of!(NopIn, stat_sn), 24);
}

#[test]
fn a_read10_command_encodes_to_the_rfc_bytes() {
    let mut h = ScsiCommand::new();
    h.opcode |= IMMEDIATE;
    h.flags = FINAL | ScsiCommand::READ | ScsiCommand::ATTR_SIMPLE;
    h.lun = [0, 1, 0, 0, 0, 0, 0, 0];
    h.itt = 0x0102_0304.into();
    h.expected_data_transfer_length = 4096.into();
    h.cmd_sn = 0x10.into();
    h.exp_stat_sn = 0x20.into();
    h.cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0]);
    #[rustfmt::skip]
    let want: [u8; 48] = [
        0x41, // I, opcode 01h
        0xc1, // F, R, ATTR simple
        0, 0, // reserved
        0, 0, 0, 0, // TotalAHSLength, DataSegmentLength
        0, 1, 0, 0, 0, 0, 0, 0, // LUN 1
        0x01, 0x02, 0x03, 0x04, // Initiator Task Tag
        0, 0, 0x10, 0, // Expected Data Transfer Length
        0, 0, 0, 0x10, // CmdSN
        0, 0, 0, 0x20, // ExpStatSN
        0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, // CDB
    ];
    assert_eq!(Pdu::with_header(&h).bhs, want);
}

#[test]
fn a_data_in_with_status_decodes_from_the_rfc_bytes() {
    #[rustfmt::skip]
    let bhs: [u8; 48] = [
        0x25, // opcode
        0x83, // F, U, S
        0, // reserved
        0x00, // status GOOD
        0, 0, 0x02, 0, // DataSegmentLength 512
        0, 1, 0, 0, 0, 0, 0, 0, // LUN
        0, 0, 0, 7, // Initiator Task Tag
        0xff, 0xff, 0xff, 0xff, // Target Transfer Tag
        0, 0, 0, 9, // StatSN
        0, 0, 0, 10, // ExpCmdSN
        0, 0, 0, 40, // MaxCmdSN
        0, 0, 0, 2, // DataSN
        0, 0, 0x04, 0, // Buffer Offset 1024
        0, 0, 0x01, 0, // Residual Count 256
    ];
    let h = DataIn::read(&bhs);
    assert_eq!(h.flags, FINAL | RESIDUAL_UNDERFLOW | DataIn::STATUS);
    assert_eq!(h.status, 0);
    assert_eq!(h.itt.to_native(), 7);
    assert_eq!(h.ttt.to_native(), 0xffff_ffff);
    assert_eq!(h.stat_sn.to_native(), 9);
    assert_eq!(h.data_sn.to_native(), 2);
    assert_eq!(h.buffer_offset.to_native(), 1024);
    assert_eq!(h.residual_count.to_native(), 256);
}

#[test]
fn an_asynchronous_logout_request_decodes_its_parameters() {
    let mut bhs = [0u8; 48];
    bhs[0] = 0x32;
    bhs[36] = 1; // AsyncEvent: logout request
    bhs[42..44].copy_from_slice(&[0, 5]); // Parameter3: 5 s
    let h = AsyncMessage::read(&bhs);
    assert_eq!(h.async_event, 1);
    assert_eq!(h.parameter3.to_native(), 5);
}

#[test]
fn a_short_header_reads_as_zeros_past_its_end() {
    let h = R2t::read(&[0x31, 0x80]);
    assert_eq!((h.opcode, h.flags), (0x31, 0x80));
    assert_eq!(h.desired_data_transfer_length.to_native(), 0);
}
