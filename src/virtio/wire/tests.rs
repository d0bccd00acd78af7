// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The layouts against bytes written from the virtio 1.2 specification
//! (5.6.6), not against the structures themselves.

#![allow(clippy::indexing_slicing)]

use std::mem::{offset_of, size_of};

use vm_memory::ByteValued;

use super::*;

#[test]
fn request_header_is_51_bytes_with_the_cdb_at_byte_19() {
    // virtio 5.6.6.1: lun[8], le64 id, task_attr, prio, crn, cdb[32].
    assert_eq!(size_of::<CmdReq>(), 51);
    assert_eq!(offset_of!(CmdReq, lun), 0);
    assert_eq!(offset_of!(CmdReq, tag), 8);
    assert_eq!(offset_of!(CmdReq, task_attr), 16);
    assert_eq!(offset_of!(CmdReq, prio), 17);
    assert_eq!(offset_of!(CmdReq, crn), 18);
    assert_eq!(offset_of!(CmdReq, cdb), 19);
}

#[test]
fn a_read16_request_for_lun_2_encodes_to_the_spec_bytes() {
    let cdb = [0x88, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 8, 0, 0];
    let req = CmdReq::new(single_level_lun(0, 2), 0x0102_0304_0506_0708, &cdb);
    #[rustfmt::skip]
    let want: [u8; 51] = [
        1, 0, 0x00, 0x02, 0, 0, 0, 0, // lun: target 0, LUN 2
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // id, little-endian
        0, // task_attr: VIRTIO_SCSI_S_SIMPLE
        0, // prio
        0, // crn
        0x88, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 8, 0, 0, // READ(16)
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // rest of cdb[32]
    ];
    assert_eq!(req.as_slice(), &want[..]);
}

#[test]
fn a_request_from_guest_bytes_decodes_tag_attribute_and_cdb() {
    #[rustfmt::skip]
    let bytes: [u8; 51] = [
        1, 0, 0x40, 0x05, 0, 0, 0, 0, // lun: target 0, flat LUN 5
        0x34, 0x12, 0, 0, 0, 0, 0, 0, // id 0x1234
        1, // task_attr: VIRTIO_SCSI_S_ORDERED
        0, 0, // prio, crn
        0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0, // READ(10) of LBA 9
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let req = CmdReq::from_slice(&bytes).copied().unwrap();
    assert_eq!(req.tag(), 0x1234);
    assert_eq!(req.task_attr, TaskAttr::Ordered as u8);
    assert_eq!(req.cdb[..10], [0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0]);
    assert_eq!(
        VirtioLun::parse(&req.lun),
        VirtioLun::Target0 { b0: 0x40, b1: 5 }
    );
}

#[test]
fn response_header_is_108_bytes_with_the_sense_at_byte_12() {
    // virtio 5.6.6.1: le32 sense_len, le32 residual, le16
    // status_qualifier, u8 status, u8 response, u8 sense[96].
    assert_eq!(size_of::<CmdResp>(), 108);
    assert_eq!(offset_of!(CmdResp, sense_len), 0);
    assert_eq!(offset_of!(CmdResp, resid), 4);
    assert_eq!(offset_of!(CmdResp, status_qualifier), 8);
    assert_eq!(offset_of!(CmdResp, status), 10);
    assert_eq!(offset_of!(CmdResp, response), 11);
    assert_eq!(offset_of!(CmdResp, sense), 12);
}

#[test]
fn a_check_condition_response_encodes_to_the_spec_bytes() {
    let r = CmdResp::new(Response::Ok, 0x02, &[0x70, 0, 5], 0x100);
    let b = r.as_slice();
    assert_eq!(
        b[..15],
        [
            3, 0, 0, 0, // sense_len
            0, 1, 0, 0, // residual 0x100
            0, 0,    // status_qualifier
            0x02, // status: CHECK CONDITION
            0,    // response: VIRTIO_SCSI_S_OK
            0x70, 0, 5, // sense
        ]
    );
    assert!(b[15..].iter().all(|&x| x == 0));
    assert_eq!(r.sense(), &[0x70, 0, 5]);
}

#[test]
fn response_residual_saturates_and_sense_is_cut_at_96_bytes() {
    let r = CmdResp::new(Response::Overrun, 0, &[0xaa; 200], 1 << 40);
    let b = r.as_slice();
    assert_eq!(b[..12], [96, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1]);
    assert!(b[12..].iter().all(|&x| x == 0xaa));
}

#[test]
fn a_sense_length_beyond_the_field_reads_as_the_whole_field() {
    let mut bytes = [0u8; 108];
    bytes[0..4].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]); // sense_len
    let r = CmdResp::from_slice(&bytes).copied().unwrap();
    assert_eq!(r.sense().len(), 96);
}

#[test]
fn tmf_request_is_24_bytes_and_decodes_from_the_spec_bytes() {
    // virtio 5.6.6.2: le32 type, le32 subtype, u8 lun[8], le64 id.
    assert_eq!(size_of::<CtrlTmfReq>(), 24);
    assert_eq!(offset_of!(CtrlTmfReq, subtype), 4);
    assert_eq!(offset_of!(CtrlTmfReq, lun), 8);
    assert_eq!(offset_of!(CtrlTmfReq, tag), 16);
    #[rustfmt::skip]
    let bytes: [u8; 24] = [
        0, 0, 0, 0, // type: VIRTIO_SCSI_T_TMF
        0, 0, 0, 0, // subtype: ABORT_TASK
        1, 0, 0, 3, 0, 0, 0, 0, // lun: target 0, LUN 3
        0xef, 0xbe, 0, 0, 0, 0, 0, 0, // id 0xbeef
    ];
    let t = CtrlTmfReq::from_slice(&bytes).copied().unwrap();
    assert_eq!(CtrlType::try_from(t.ty.to_native()), Ok(CtrlType::Tmf));
    assert_eq!(
        TmfSubtype::try_from(t.subtype.to_native()),
        Ok(TmfSubtype::AbortTask)
    );
    assert_eq!(t.lun, [1, 0, 0, 3, 0, 0, 0, 0]);
    assert_eq!(t.tag.to_native(), 0xbeef);
    assert_eq!(size_of::<CtrlTmfResp>(), 1);
}

#[test]
fn an_request_is_16_bytes_and_its_response_5() {
    // virtio 5.6.6.2.1: le32 type, u8 lun[8], le32 event_requested; then
    // le32 event_actual, u8 response.
    assert_eq!(size_of::<CtrlAnReq>(), 16);
    assert_eq!(offset_of!(CtrlAnReq, lun), 4);
    assert_eq!(offset_of!(CtrlAnReq, event_requested), 12);
    assert_eq!(size_of::<CtrlAnResp>(), 5);
    let r = CtrlAnResp {
        event_actual: 0x10.into(), // media change
        response: Response::FunctionRejected as u8,
    };
    assert_eq!(r.as_slice(), &[0x10, 0, 0, 0, 11]);
}

#[test]
fn a_rescan_event_for_lun_300_encodes_to_the_spec_bytes() {
    // virtio 5.6.6.3: le32 event, u8 lun[8], le32 reason.
    assert_eq!(size_of::<Event>(), 16);
    let mut e = Event::new(EventType::TransportReset, 300, ResetReason::Rescan as u32);
    #[rustfmt::skip]
    assert_eq!(e.as_slice(), &[
        1, 0, 0, 0, // VIRTIO_SCSI_T_TRANSPORT_RESET
        1, 0, 0x41, 0x2c, 0, 0, 0, 0, // target 0, flat LUN 300
        1, 0, 0, 0, // VIRTIO_SCSI_EVT_RESET_RESCAN
    ]);
    e.set_events_missed();
    assert_eq!(e.as_slice()[..4], [1, 0, 0, 0x80]);
}

#[test]
fn a_parameter_change_carries_asc_then_ascq() {
    let e = Event::new(EventType::ParamChange, 2, param_change_reason(0x2a, 0x09));
    #[rustfmt::skip]
    assert_eq!(e.as_slice(), &[
        3, 0, 0, 0, // VIRTIO_SCSI_T_PARAM_CHANGE
        1, 0, 0, 2, 0, 0, 0, 0, // target 0, LUN 2
        0x2a, 0x09, 0, 0, // CAPACITY DATA HAS CHANGED
    ]);
}

#[test]
fn codes_have_the_spec_values() {
    // virtio 5.6.6.1 and 5.6.6.2: VIRTIO_SCSI_S_*.
    let responses = [
        (Response::Ok, 0),
        (Response::Overrun, 1),
        (Response::Aborted, 2),
        (Response::BadTarget, 3),
        (Response::Reset, 4),
        (Response::Busy, 5),
        (Response::TransportFailure, 6),
        (Response::TargetFailure, 7),
        (Response::NexusFailure, 8),
        (Response::Failure, 9),
        (Response::FunctionSucceeded, 10),
        (Response::FunctionRejected, 11),
        (Response::IncorrectLun, 12),
    ];
    for (r, v) in responses {
        assert_eq!(r as u8, v);
        assert_eq!(Response::try_from(v), Ok(r));
    }
    assert_eq!(Response::try_from(13), Err(13));
    // VIRTIO_SCSI_T_TMF_*.
    let subtypes = [
        (TmfSubtype::AbortTask, 0),
        (TmfSubtype::AbortTaskSet, 1),
        (TmfSubtype::ClearAca, 2),
        (TmfSubtype::ClearTaskSet, 3),
        (TmfSubtype::ITNexusReset, 4),
        (TmfSubtype::LogicalUnitReset, 5),
        (TmfSubtype::QueryTask, 6),
        (TmfSubtype::QueryTaskSet, 7),
    ];
    for (s, v) in subtypes {
        assert_eq!(s as u32, v);
        assert_eq!(TmfSubtype::try_from(v), Ok(s));
    }
    assert_eq!(TmfSubtype::try_from(8), Err(8));
    assert_eq!(CtrlType::try_from(2), Ok(CtrlType::AnSubscribe));
    assert_eq!(CtrlType::try_from(3), Err(3));
    assert_eq!(
        [
            EventType::NoEvent as u32,
            EventType::TransportReset as u32,
            EventType::AsyncNotify as u32,
            EventType::ParamChange as u32
        ],
        [0, 1, 2, 3]
    );
    assert_eq!(EVENTS_MISSED, 0x8000_0000);
    assert_eq!(
        [
            ResetReason::Hard as u32,
            ResetReason::Rescan as u32,
            ResetReason::Removed as u32
        ],
        [0, 1, 2]
    );
}

#[test]
fn lun_fields_use_the_report_luns_form() {
    assert_eq!(single_level_lun(0, 2), [1, 0, 0x00, 0x02, 0, 0, 0, 0]);
    assert_eq!(single_level_lun(0, 255), [1, 0, 0x00, 0xff, 0, 0, 0, 0]);
    assert_eq!(single_level_lun(0, 256), [1, 0, 0x41, 0x00, 0, 0, 0, 0]);
    assert_eq!(single_level_lun(0, 0x3fff), [1, 0, 0x7f, 0xff, 0, 0, 0, 0]);
    assert_eq!(single_level_lun(3, 1), [1, 3, 0, 1, 0, 0, 0, 0]);
}

#[test]
fn linux_lun_fields_use_flat_space_addressing_even_for_lun_0() {
    // virtio 1.2 5.6.6.1; SAM-5 flat space addressing: 01b, then 14 bits.
    assert_eq!(linux_lun(0, 0), [1, 0, 0x40, 0x00, 0, 0, 0, 0]);
    assert_eq!(linux_lun(0, 5), [1, 0, 0x40, 0x05, 0, 0, 0, 0]);
    assert_eq!(linux_lun(0, 300), [1, 0, 0x41, 0x2c, 0, 0, 0, 0]);
    assert_eq!(linux_lun(2, 0x3fff), [1, 2, 0x7f, 0xff, 0, 0, 0, 0]);
}

#[test]
fn linux_lun_fields_parse_to_the_same_lun_as_the_report_luns_form() {
    for lun in [0, 5, 255, 256, 300, 0x3fff] {
        let VirtioLun::Target0 { b0, b1 } = VirtioLun::parse(&linux_lun(0, lun)) else {
            panic!("LUN {lun} not parsed as target 0");
        };
        assert_eq!(
            crate::scsi::LunAddress::from_first_level(b0, b1),
            crate::scsi::LunAddress::Lun(lun)
        );
    }
}

#[test]
fn lun_parsing_distinguishes_target_wlun_and_bad_target() {
    assert_eq!(
        VirtioLun::parse(&[1, 0, 0x00, 0x02, 0, 0, 0, 0]),
        VirtioLun::Target0 { b0: 0, b1: 2 }
    );
    assert_eq!(
        VirtioLun::parse(&[0xc1, 0x01, 0, 0, 0, 0, 0, 0]),
        VirtioLun::ReportLunsWellKnown
    );
    assert_eq!(
        VirtioLun::parse(&[1, 3, 0, 0, 0, 0, 0, 0]),
        VirtioLun::BadTarget
    );
    assert_eq!(
        VirtioLun::parse(&[0, 0, 0, 0, 0, 0, 0, 0]),
        VirtioLun::BadTarget
    );
    assert_eq!(
        VirtioLun::parse(&[1, 0, 0x40, 1, 0, 0, 0, 1]),
        VirtioLun::Unsupported
    );
}

#[test]
fn codes_agree_with_the_linux_header() {
    // A second, independent source: virtio-bindings' copy of
    // include/uapi/linux/virtio_scsi.h.
    use virtio_bindings::virtio_scsi as h;
    assert_eq!(CtrlType::Tmf as u32, h::VIRTIO_SCSI_T_TMF);
    assert_eq!(CtrlType::AnQuery as u32, h::VIRTIO_SCSI_T_AN_QUERY);
    assert_eq!(CtrlType::AnSubscribe as u32, h::VIRTIO_SCSI_T_AN_SUBSCRIBE);
    assert_eq!(
        TmfSubtype::ITNexusReset as u32,
        h::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET
    );
    assert_eq!(
        TmfSubtype::QueryTaskSet as u32,
        h::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET
    );
    assert_eq!(
        Response::IncorrectLun as u32,
        h::VIRTIO_SCSI_S_INCORRECT_LUN
    );
    assert_eq!(
        Response::FunctionRejected as u32,
        h::VIRTIO_SCSI_S_FUNCTION_REJECTED
    );
    assert_eq!(EventType::ParamChange as u32, h::VIRTIO_SCSI_T_PARAM_CHANGE);
    assert_eq!(
        EventType::TransportReset as u32,
        h::VIRTIO_SCSI_T_TRANSPORT_RESET
    );
    assert_eq!(EVENTS_MISSED, h::VIRTIO_SCSI_T_EVENTS_MISSED);
    assert_eq!(
        ResetReason::Removed as u32,
        h::VIRTIO_SCSI_EVT_RESET_REMOVED
    );
    assert_eq!(ResetReason::Rescan as u32, h::VIRTIO_SCSI_EVT_RESET_RESCAN);
    assert_eq!(TaskAttr::Aca as u32, h::VIRTIO_SCSI_S_ACA);
    assert_eq!(size_of::<CmdReq>(), size_of::<h::virtio_scsi_cmd_req>());
    assert_eq!(size_of::<CmdResp>(), size_of::<h::virtio_scsi_cmd_resp>());
    assert_eq!(
        size_of::<CtrlAnResp>(),
        size_of::<h::virtio_scsi_ctrl_an_resp>()
    );
    assert_eq!(size_of::<Event>(), size_of::<h::virtio_scsi_event>());
}
