// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The session driven PDU by PDU: what it sends for each command, how it
//! takes each kind of answer, and the target errors it refuses.

use super::negotiation::MAX_NEGOTIATION_ROUNDS;
use super::*;
use crate::iscsi::pdu::Digests;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

pub(crate) fn negotiated(immediate: bool, initial_r2t: bool, max_cmd_sn: u32) -> Negotiated {
    Negotiated {
        digests: Digests::default(),
        max_xmit_data_segment_length: 8192,
        max_recv_data_segment_length: 262144,
        max_burst_length: 262144,
        first_burst_length: 65536,
        initial_r2t,
        immediate_data: immediate,
        max_outstanding_r2t: 1,
        data_pdu_in_order: true,
        data_sequence_in_order: true,
        default_time2wait: 2,
        default_time2retain: 0,
        tsih: 1,
        cmd_sn: 10,
        exp_cmd_sn: 10,
        max_cmd_sn,
        exp_stat_sn: 5,
        chap: None,
        target_keys: vec![],
    }
}

fn drain(s: &mut Session) -> Vec<Pdu> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

const LUN: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

#[test]
fn commands_wait_for_the_cmd_sn_window() {
    // Window of 2 commands: CmdSN 10 and 11 (MaxCmdSN 11).
    let mut s = Session::new(negotiated(true, true, 11));
    for i in 0..4 {
        s.submit(i, LUN, [0x00; 6], Data::None);
    }
    let sent = drain(&mut s);
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].u32_at(24), sent[1].u32_at(24)), (10, 11));
    // The target completes the first and opens the window by one.
    let mut r = Pdu::new(Opcode::ScsiResponse);
    r.set_flags(0x80);
    r.set_itt(sent[0].itt());
    r.set_u32(24, 5);
    r.set_u32(28, 11);
    r.set_u32(32, 12);
    let ev = s.receive(r).unwrap();
    assert!(matches!(&ev[0], Event::Completed(c) if c.tag == 0 && c.status == 0));
    let next = drain(&mut s);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].u32_at(24), 12);
    assert_eq!(next[0].u32_at(28), 6); // ExpStatSN advanced
}

#[test]
fn immediate_data_then_r2t_driven_data_out_in_mrdsl_chunks() {
    let mut s = Session::new(negotiated(true, true, 100));
    let data: Vec<u8> = (0..40000u32).map(|i| i as u8).collect();
    let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(data.clone()));
    let cmd = drain(&mut s);
    assert_eq!(cmd.len(), 1);
    // Immediate data up to min(FirstBurstLength, MRDSL) = 8192, F set
    // because InitialR2T=Yes forbids unsolicited Data-Out.
    assert_eq!(cmd[0].data.len(), 8192);
    assert_eq!(cmd[0].flags() & 0xe0, 0xa0);
    let mut r2t = Pdu::new(Opcode::ReadyToTransfer);
    r2t.set_flags(0x80);
    r2t.set_itt(itt);
    r2t.set_u32(20, 0x77);
    r2t.set_u32(40, 8192);
    r2t.set_u32(44, 40000 - 8192);
    s.receive(r2t).unwrap();
    let outs = drain(&mut s);
    assert_eq!(outs.len(), 4); // 31808 bytes in 8192-byte PDUs
    let mut off = 8192;
    for (i, p) in outs.iter().enumerate() {
        assert_eq!(p.opcode(), Some(Opcode::DataOut));
        assert_eq!(p.ttt(), 0x77);
        assert_eq!(p.u32_at(36), i as u32); // DataSN
        assert_eq!(p.u32_at(40), off as u32);
        assert_eq!(p.data[..], data[off..off + p.data.len()]);
        assert_eq!(p.flags() & 0x80 != 0, i == 3);
        off += p.data.len();
    }
    assert_eq!(off, 40000);
}

fn r2t(itt: u32, ttt: u32, offset: u32, len: u32) -> Pdu {
    let mut p = Pdu::new(Opcode::ReadyToTransfer);
    p.set_flags(0x80);
    p.set_itt(itt);
    p.set_u32(20, ttt);
    p.set_u32(40, offset);
    p.set_u32(44, len);
    p
}

#[test]
fn a_target_cannot_ask_for_a_writes_data_twice() {
    // 40000 bytes, 8192 of them immediate: 31808 left to ask for, in
    // as many R2Ts as the target likes.
    let mut s = Session::new(negotiated(true, true, 100));
    let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![7; 40000]));
    drain(&mut s);
    s.receive(r2t(itt, 1, 8192, 16384)).unwrap();
    s.receive(r2t(itt, 2, 24576, 15424)).unwrap();
    assert_eq!(drain(&mut s).len(), 4);
    // Asking again (a loop of R2Ts would have the session send the
    // data again and again, faster than a slow reader drains it) ends
    // the connection, and the command is retried on the next one.
    let e = s.receive(r2t(itt, 3, 8192, 8192)).unwrap_err();
    assert!(e.to_string().contains("0 left"), "{e}");
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.take_unfinished().len(), 1);

    // Unsolicited data (InitialR2T=No) is not asked for either.
    let mut s = Session::new(negotiated(false, false, 100));
    let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 70000]));
    drain(&mut s);
    assert!(s.receive(r2t(itt, 1, 0, 70000)).is_err());
    let mut s = Session::new(negotiated(false, false, 100));
    let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 70000]));
    drain(&mut s);
    s.receive(r2t(itt, 1, 65536, 70000 - 65536)).unwrap();
    assert_eq!(drain(&mut s).len(), 1);
}

#[test]
fn unsolicited_data_out_fills_the_first_burst_when_initial_r2t_is_no() {
    let mut s = Session::new(negotiated(false, false, 100));
    s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 70000]));
    let pdus = drain(&mut s);
    // Command with F=0, then 65536 bytes of Data-Out (TTT reserved).
    assert_eq!(pdus[0].flags() & 0x80, 0);
    let total: usize = pdus[1..].iter().map(|p| p.data.len()).sum();
    assert_eq!(total, 65536);
    assert!(pdus[1..].iter().all(|p| p.ttt() == RESERVED_TAG));
    assert!(pdus.last().unwrap().flags() & 0x80 != 0);
}

#[test]
fn data_in_with_status_completes_with_data_and_residual() {
    let mut s = Session::new(negotiated(true, true, 100));
    let itt = s.submit(7, LUN, [0x28; 10], Data::Read(1024));
    drain(&mut s);
    let mut d1 = Pdu::new(Opcode::DataIn);
    d1.set_itt(itt);
    d1.set_u32(40, 0);
    d1.data = vec![0xaa; 512];
    assert!(s.receive(d1).unwrap().is_empty());
    let mut d2 = Pdu::new(Opcode::DataIn);
    d2.set_flags(0x80 | 0x02 | 0x01); // F, U, S
    d2.set_itt(itt);
    d2.set_u32(24, 5);
    d2.set_u32(40, 512);
    d2.set_u32(44, 256);
    d2.data = vec![0xbb; 256];
    let ev = s.receive(d2).unwrap();
    let Event::Completed(c) = &ev[0] else {
        panic!()
    };
    assert_eq!(
        (c.tag, c.status, c.residual, c.data.len()),
        (7, 0, 256, 768)
    );
}

/// A sink in memory; `read_from` is the Reader's business, not the
/// session's.
struct MemSink(std::sync::Mutex<Vec<u8>>);

impl Sink for MemSink {
    fn size(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn write_at(&self, offset: usize, data: &[u8]) -> bool {
        let mut b = self.0.lock().unwrap();
        b[offset..offset + data.len()].copy_from_slice(data);
        true
    }
    fn read_from(&self, _: RawFd, _: usize, _: usize, _: &mut [u8]) -> Option<io::Result<usize>> {
        None
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
        buf.copy_from_slice(&self.0.lock().unwrap()[offset..offset + buf.len()]);
        true
    }
}

/// A received Data-In header with `len` bytes of data announced.
fn data_in_header(itt: u32, offset: u32, len: u32, flags: u8) -> Pdu {
    let mut d = Pdu::new(Opcode::DataIn);
    d.set_flags(flags);
    d.set_itt(itt);
    d.set_u32(40, offset);
    d.bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    d
}

#[test]
fn data_in_goes_to_the_sink_whether_placed_or_copied() {
    let mut s = Session::new(negotiated(true, true, 100));
    let sink = Arc::new(MemSink(std::sync::Mutex::new(vec![0; 1024])));
    let itt = s.submit(7, LUN, [0x28; 10], Data::ReadInto(SinkRef(sink.clone())));
    drain(&mut s);
    // Only Data-In for this task, within its length, may be placed.
    let h = data_in_header(itt, 512, 512, 0);
    assert_eq!(s.place(&h.bhs).map(|(_, at)| at), Some(512));
    assert!(s.place(&data_in_header(itt, 768, 512, 0).bhs).is_none());
    assert!(s.place(&data_in_header(itt + 1, 0, 512, 0).bhs).is_none());
    let mut other = h.clone();
    other.bhs[0] = Opcode::ScsiResponse as u8;
    assert!(s.place(&other.bhs).is_none());
    // First half copied by the session, second half placed (no data).
    let mut d1 = data_in_header(itt, 0, 512, 0);
    d1.data = vec![0xaa; 512];
    assert!(s.receive(d1).unwrap().is_empty());
    sink.0.lock().unwrap()[512..].fill(0xbb);
    let ev = s.receive(data_in_header(itt, 512, 512, 0x81)).unwrap();
    let Event::Completed(c) = &ev[0] else {
        panic!()
    };
    assert_eq!((c.placed, c.data.len(), c.residual), (1024, 0, 0));
    let b = sink.0.lock().unwrap();
    assert!(b[..512].iter().all(|&x| x == 0xaa) && b[512..].iter().all(|&x| x == 0xbb));
}

/// Tasks out, small ones among them, data-in still due.
fn out(s: &Session) -> (usize, usize, usize) {
    let a = s.awaited();
    (a.tasks, a.small, a.data)
}

#[test]
fn awaited_follows_the_window_data_in_completions_aborts_and_retries() {
    // Window of four commands: CmdSN 10 to 13.
    let mut s = Session::new(negotiated(true, true, 13));
    let a = s.submit(1, LUN, [0x28; 10], Data::Read(4096));
    s.submit(2, LUN, [0x28; 10], Data::Read(1024));
    s.submit(3, LUN, [0x2a; 10], Data::Write(vec![0; 512]));
    drain(&mut s);
    assert_eq!(out(&s), (3, 3, 5120));
    // Data-In (in order, as negotiated) counts once per byte, whether
    // copied or placed; a resent PDU does not count again.
    let mut d = data_in_header(a, 0, 1024, 0);
    d.data = vec![1; 1024];
    s.receive(d.clone()).unwrap();
    s.receive(d).unwrap();
    assert_eq!(out(&s), (3, 3, 4096));
    s.receive(data_in_header(a, 1024, 1024, 0)).ok();
    assert_eq!(out(&s), (3, 3, 4096), "placed into a task without a sink");
    let mut d = data_in_header(a, 1024, 1024, 0);
    d.data = vec![1; 1024];
    s.receive(d).unwrap();
    assert_eq!(out(&s), (3, 3, 3072));
    // Status with less data than asked: what did not come is not due.
    let mut d = data_in_header(a, 2048, 1024, 0x83);
    d.data = vec![1; 1024];
    s.receive(d).unwrap();
    assert_eq!(out(&s), (2, 2, 1024));
    // A big read; a command the window holds back is not awaited
    // until it goes.
    s.submit(4, LUN, [0x28; 10], Data::Read(BIG_READ));
    s.submit(5, LUN, [0x28; 10], Data::Read(100));
    assert_eq!(out(&s), (3, 2, 66560));
    // An ABORT TASK SET drops the unsent command at once and, once
    // complete, the commands it terminated at the target.
    s.task_management(9, TmfFunction::AbortTaskSet, LUN, None);
    assert_eq!(out(&s), (4, 3, 66560));
    let tmf = drain(&mut s).pop().unwrap();
    let mut r = Pdu::new(Opcode::TaskMgmtResponse);
    r.set_flags(0x80);
    r.set_itt(tmf.itt());
    r.set_u32(28, 14);
    r.set_u32(32, 20);
    s.receive(r).unwrap();
    assert_eq!(out(&s), (0, 0, 0));
    // Commands taken for a retry on a new session are not awaited here.
    s.submit(6, LUN, [0x28; 10], Data::Read(512));
    assert_eq!(out(&s), (1, 1, 512));
    s.take_unfinished();
    assert_eq!(out(&s), (0, 0, 0));
}

#[test]
fn least_due_is_the_read_closest_to_done_with_the_headers_it_still_needs() {
    // Window of three commands; segments of at most 256 KiB.
    let mut s = Session::new(negotiated(true, true, 12));
    assert_eq!(s.least_due(), None, "nothing out");
    let a = s.submit(1, LUN, [0x28; 10], Data::Read(1 << 20));
    s.submit(2, LUN, [0x28; 10], Data::Read(1 << 20));
    drain(&mut s);
    // 1 MiB: four segments at least, the first one's header may be
    // here already: three more headers.
    assert_eq!(s.least_due(), Some((1 << 20) + 3 * 48));
    // 768 KiB of the first arrive: 256 KiB and no header left.
    for at in [0, 256, 512] {
        let mut d = data_in_header(a, at << 10, 256 << 10, 0);
        d.data = vec![0; 256 << 10];
        s.receive(d).unwrap();
    }
    assert_eq!(s.least_due(), Some(256 << 10));
    // A small command out: no figure (its answer is not data).
    s.submit(3, LUN, [0x00; 6], Data::None);
    drain(&mut s);
    assert_eq!(s.least_due(), None);
    // With both digests a header costs 56 bytes.
    let mut n = negotiated(true, true, 12);
    n.digests = Digests {
        header: true,
        data: true,
    };
    let mut s = Session::new(n);
    s.submit(1, LUN, [0x28; 10], Data::Read(BIG_READ));
    s.submit(2, LUN, [0x28; 10], Data::Read(600 << 10));
    drain(&mut s);
    assert_eq!(s.least_due(), Some(BIG_READ as usize));
}

#[test]
fn placed_data_in_for_a_task_without_a_sink_is_a_protocol_error() {
    let mut s = Session::new(negotiated(true, true, 100));
    let itt = s.submit(1, LUN, [0x28; 10], Data::Read(1024));
    drain(&mut s);
    assert!(s.place(&data_in_header(itt, 0, 512, 0).bhs).is_none());
    assert!(s.receive(data_in_header(itt, 0, 512, 0)).is_err());
}

#[test]
fn a_resent_read_keeps_its_sink() {
    let mut s = Session::new(negotiated(true, true, 100));
    let k = SinkRef(Arc::new(MemSink(std::sync::Mutex::new(vec![0; 64]))));
    s.submit(1, LUN, [0x28; 10], Data::ReadInto(k.clone()));
    let again = s.take_unfinished();
    assert_eq!(again[0].3, Data::ReadInto(k));
}

#[test]
fn check_condition_carries_the_sense_unchanged() {
    let mut s = Session::new(negotiated(true, true, 100));
    let itt = s.submit(3, LUN, [0x00; 6], Data::None);
    drain(&mut s);
    let mut r = Pdu::new(Opcode::ScsiResponse);
    r.set_flags(0x80);
    r.set_byte(3, 0x02);
    r.set_itt(itt);
    r.data = vec![
        0, 18, 0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0,
    ];
    let ev = s.receive(r).unwrap();
    let Event::Completed(c) = &ev[0] else {
        panic!()
    };
    assert_eq!(c.status, 0x02);
    assert_eq!(c.sense.len(), 18);
    assert_eq!(c.sense[12], 0x29);
}

#[test]
fn target_nop_in_ping_is_answered_with_its_ttt() {
    let mut s = Session::new(negotiated(true, true, 100));
    let mut n = Pdu::new(Opcode::NopIn);
    n.set_itt(RESERVED_TAG);
    n.set_u32(20, 0x1234);
    s.receive(n).unwrap();
    let out = drain(&mut s);
    assert_eq!(out[0].opcode(), Some(Opcode::NopOut));
    assert_eq!((out[0].itt(), out[0].ttt()), (RESERVED_TAG, 0x1234));
}

#[test]
fn data_in_past_the_expected_length_is_a_protocol_error() {
    let mut s = Session::new(negotiated(true, true, 100));
    let itt = s.submit(1, LUN, [0x28; 10], Data::Read(512));
    drain(&mut s);
    let mut d = Pdu::new(Opcode::DataIn);
    d.set_itt(itt);
    d.set_u32(40, 256);
    d.data = vec![0; 512];
    assert!(s.receive(d).is_err());
}

#[test]
fn r2t_for_an_unknown_task_is_a_protocol_error() {
    let mut s = Session::new(negotiated(true, true, 100));
    let mut r = Pdu::new(Opcode::ReadyToTransfer);
    r.set_itt(99);
    assert!(s.receive(r).is_err());
}

#[test]
fn async_logout_request_is_reported() {
    let mut s = Session::new(negotiated(true, true, 100));
    let mut a = Pdu::new(Opcode::AsyncMessage);
    a.set_byte(36, 1);
    a.set_u16(42, 5);
    assert_eq!(
        s.receive(a).unwrap(),
        vec![Event::LogoutRequested { within_secs: 5 }]
    );
}

/// An Asynchronous Message with `event` and Parameter1-3 (RFC 7143
/// 11.9: bytes 36, 38, 40, 42).
fn async_message(event: u8, params: [u16; 3]) -> Pdu {
    let mut a = Pdu::new(Opcode::AsyncMessage);
    a.set_flags(0x80);
    a.set_itt(RESERVED_TAG);
    a.set_byte(36, event);
    a.set_u16(38, params[0]);
    a.set_u16(40, params[1]);
    a.set_u16(42, params[2]);
    a
}

/// The target's final Text Response to task `itt`: `done` sets F.
fn text_response(itt: u32, ttt: u32, done: bool, keys: &[(&str, &str)]) -> Pdu {
    let mut r = Pdu::new(Opcode::TextResponse);
    r.set_flags(if done { 0x80 } else { 0 });
    r.set_itt(itt);
    r.set_u32(20, ttt);
    r.data = text::encode(keys);
    r
}

#[test]
fn a_drop_announcement_reports_its_time2wait_from_parameter2() {
    let mut s = Session::new(negotiated(true, true, 100));
    // Event 3 (all connections), Parameter2 Time2Wait 7, Parameter3
    // Time2Retain 20.
    let ev = s.receive(async_message(3, [0, 7, 20])).unwrap();
    assert_eq!(ev, vec![Event::Dropping { time2wait: 7 }]);
    let ev = s.receive(async_message(2, [1, 0, 0])).unwrap();
    assert_eq!(ev, vec![Event::Dropping { time2wait: 0 }]);
}

#[test]
fn a_negotiation_request_is_answered_with_an_empty_text_request() {
    let mut s = Session::new(negotiated(true, true, 100));
    assert_eq!(s.receive(async_message(4, [0, 0, 5])).unwrap(), vec![]);
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let t = &out[0];
    assert_eq!(t.opcode(), Some(Opcode::TextRequest));
    assert_eq!(t.bhs[0] & 0x40, 0x40, "immediate");
    assert_eq!(t.flags() & 0x80, 0x80, "final");
    assert_eq!(t.ttt(), RESERVED_TAG);
    assert!(t.data.is_empty());
    // The target has nothing to negotiate after all: done, no event.
    let ev = s
        .receive(text_response(t.itt(), RESERVED_TAG, true, &[]))
        .unwrap();
    assert_eq!(ev, vec![]);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_negotiation_request_while_a_text_request_is_pending_sends_nothing_more() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.text_request(&[("SendTargets", "All")]);
    let itt = drain(&mut s)[0].itt();
    s.receive(async_message(4, [0, 0, 5])).unwrap();
    assert!(drain(&mut s).is_empty());
    // The pending request's answer still goes to the caller.
    let ev = s
        .receive(text_response(
            itt,
            RESERVED_TAG,
            true,
            &[("TargetName", "iqn.x")],
        ))
        .unwrap();
    assert_eq!(
        ev,
        vec![Event::Text(vec![("TargetName".into(), "iqn.x".into())])]
    );
}

#[test]
fn a_max_recv_data_segment_length_declared_after_login_cuts_later_data_outs() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.receive(async_message(4, [0, 0, 5])).unwrap();
    let itt = drain(&mut s)[0].itt();
    let ev = s
        .receive(text_response(
            itt,
            RESERVED_TAG,
            true,
            &[("MaxRecvDataSegmentLength", "4096")],
        ))
        .unwrap();
    assert_eq!(ev, vec![]);
    assert!(drain(&mut s).is_empty(), "a declaration needs no answer");
    // Immediate data and solicited Data-Out now come in 4096 bytes.
    let w = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![3; 12288]));
    assert_eq!(drain(&mut s)[0].data.len(), 4096);
    s.receive(r2t(w, 0x10, 4096, 8192)).unwrap();
    let outs = drain(&mut s);
    assert_eq!(
        outs.iter().map(|p| p.data.len()).collect::<Vec<_>>(),
        vec![4096, 4096]
    );
}

#[test]
fn offers_after_login_are_answered_in_the_same_task_with_the_targets_ttt() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.receive(async_message(4, [0, 0, 5])).unwrap();
    let itt = drain(&mut s)[0].itt();
    // F=0: the target is not done, and offers a login-only key.
    s.receive(text_response(
        itt,
        0x55,
        false,
        &[("MaxBurstLength", "65536")],
    ))
    .unwrap();
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].opcode(), Some(Opcode::TextRequest));
    assert_eq!((out[0].itt(), out[0].ttt()), (itt, 0x55));
    assert_eq!(
        text::parse(&out[0].data),
        vec![("MaxBurstLength".into(), "Reject".into())]
    );
    // The value negotiated at login stands.
    assert_eq!(s.n.max_burst_length, 262144);
    s.receive(text_response(itt, RESERVED_TAG, true, &[]))
        .unwrap();
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_target_that_never_ends_a_negotiation_is_a_protocol_error() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.receive(async_message(4, [0, 0, 5])).unwrap();
    let mut itt = drain(&mut s)[0].itt();
    let mut failed = false;
    for _ in 0..MAX_NEGOTIATION_ROUNDS {
        let r = text_response(itt, 0x9, false, &[("X-more", "1")]);
        if s.receive(r).is_err() {
            failed = true;
            break;
        }
        itt = drain(&mut s)[0].itt();
    }
    assert!(failed);
}

#[test]
fn an_out_of_range_declaration_after_login_is_a_protocol_error() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.receive(async_message(4, [0, 0, 5])).unwrap();
    let itt = drain(&mut s)[0].itt();
    let r = text_response(
        itt,
        RESERVED_TAG,
        true,
        &[("MaxRecvDataSegmentLength", "1")],
    );
    assert!(s.receive(r).is_err());
}

#[test]
fn a_task_termination_message_without_fast_abort_is_a_protocol_error() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.submit(1, LUN, [0x28; 10], Data::Read(512));
    drain(&mut s);
    assert!(s.receive(async_message(5, [0, 0, 0])).is_err());
}

#[test]
fn vendor_and_reserved_async_events_are_ignored() {
    let mut s = Session::new(negotiated(true, true, 100));
    for event in [6, 100, 255] {
        assert_eq!(s.receive(async_message(event, [1, 2, 3])).unwrap(), vec![]);
    }
    assert!(drain(&mut s).is_empty());
}

#[test]
fn endless_text_continuation_is_a_protocol_error() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.text_request(&[("SendTargets", "All")]);
    drain(&mut s);
    let mut failed = false;
    for _ in 0..40 {
        let mut r = Pdu::new(Opcode::TextResponse);
        r.set_flags(0x40); // C: more to come
        r.data = vec![b'x'; 65536];
        if s.receive(r).is_err() {
            failed = true;
            break;
        }
        drain(&mut s);
    }
    assert!(failed);
}

#[test]
fn lun_reset_request_and_response() {
    let mut s = Session::new(negotiated(true, true, 100));
    let start = s.task_management(9, TmfFunction::LogicalUnitReset, LUN, None);
    assert!(start.sent && start.aborted.is_empty());
    let out = drain(&mut s);
    let itt = out[0].itt();
    assert_eq!(out[0].opcode(), Some(Opcode::TaskMgmtRequest));
    assert_eq!(out[0].bhs[0] & 0x40, 0x40); // immediate
    assert_eq!(out[0].flags(), 0x85); // F + LOGICAL UNIT RESET
    assert_eq!(out[0].lun(), LUN);
    let mut r = Pdu::new(Opcode::TaskMgmtResponse);
    r.set_itt(itt);
    r.set_byte(2, 0);
    assert_eq!(
        s.receive(r).unwrap(),
        vec![Event::TaskManagement {
            tag: 9,
            response: Ok(TmfResponse::FunctionComplete)
        }]
    );
    // Not a SCSI command: nothing to retry.
    assert!(s.take_unfinished().is_empty());
}

#[test]
fn unfinished_commands_can_be_taken_for_retry() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 512]));
    s.submit(2, LUN, [0x28; 10], Data::Read(512));
    let v = s.take_unfinished();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].0, 1);
    assert_eq!(s.in_flight(), 0);
}
/// Write data in memory of its own, handed out as iovecs.
pub(crate) struct MemSource(pub Vec<u8>);

impl Source for MemSource {
    fn size(&self) -> usize {
        self.0.len()
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> bool {
        match self.0.get(offset..offset + buf.len()) {
            Some(d) => {
                buf.copy_from_slice(d);
                true
            }
            None => false,
        }
    }
    fn iovecs(&self, offset: usize, len: usize, out: &mut Vec<libc::iovec>) -> bool {
        let Some(d) = self.0.get(offset..offset + len) else {
            return false;
        };
        out.push(libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        });
        true
    }
}

#[test]
fn transmit_into_encodes_what_poll_transmit_returns() {
    for digest in [false, true] {
        let dg = Digests {
            header: digest,
            data: digest,
        };
        // How: 0 poll_transmit, 1 transmit_into, 2 transmit_into from
        // a source (spliced; a data digest computed in pieces).
        let run = |how: u8| {
            let mut s = Session::new(negotiated(true, false, 100));
            // One write spliced from its source, one copied from it.
            for (tag, len) in [(1, 100_001u32), (3, 4_097)] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let w = if how == 2 {
                    Data::WriteFrom(SourceRef(Arc::new(MemSource(data))))
                } else {
                    Data::Write(data)
                };
                s.submit(tag, LUN, [0x2a; 10], w);
            }
            s.submit(2, LUN, [0x28; 10], Data::Read(512));
            if how == 0 {
                let mut out = Vec::new();
                while let Some(p) = s.poll_transmit() {
                    out.extend_from_slice(&p.encode(dg).unwrap());
                }
                (out, 0)
            } else {
                let mut tx = Gather::default();
                s.transmit_into(dg, &mut tx).unwrap();
                (tx.contiguous(), tx.spliced())
            }
        };
        let (want, _) = run(0);
        assert!(want.len() > 65536);
        assert!(run(1) == (want.clone(), 0));
        // The big write's unsolicited data (FirstBurstLength, in 8 KiB
        // PDUs) is spliced; the small write is copied.
        assert!(run(2) == (want, 65536), "from a source, digests {digest}");
    }
}

/// A source whose memory cannot be read (never the case for a guest
/// buffer checked when its command was taken).
struct Unreadable;

impl Source for Unreadable {
    fn size(&self) -> usize {
        100
    }
    fn read_at(&self, _: usize, _: &mut [u8]) -> bool {
        false
    }
    fn iovecs(&self, _: usize, _: usize, _: &mut Vec<libc::iovec>) -> bool {
        false
    }
}

#[test]
fn a_small_write_that_cannot_be_read_is_never_sent_as_zeros() {
    for data in [false, true] {
        let dg = Digests {
            header: false,
            data,
        };
        let mut s = Session::new(negotiated(true, false, 100));
        s.submit(
            1,
            LUN,
            [0x2a; 10],
            Data::WriteFrom(SourceRef(Arc::new(Unreadable))),
        );
        let mut tx = Gather::default();
        s.transmit_into(dg, &mut tx).unwrap();
        // Left to the splice, whose sending fails (and the connection
        // is recovered): nothing made up goes to the target.
        assert_eq!(tx.spliced(), 100);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = tx
            .write_to(std::os::fd::AsRawFd::as_raw_fd(&a))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}

#[test]
fn data_out_of_a_command_that_ended_is_not_sent() {
    let mut s = Session::new(negotiated(false, true, 100));
    s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 4096]));
    let cmd = drain(&mut s).remove(0);
    let mut r2t = Pdu::new(Opcode::ReadyToTransfer);
    r2t.set_itt(cmd.itt());
    r2t.set_u32(20, 0x99);
    r2t.set_u32(44, 4096);
    s.receive(r2t).unwrap();
    // The task goes away (the connection is given up) before the
    // Data-Out is encoded: nothing refers to freed data.
    s.take_unfinished();
    let mut tx = Gather::default();
    s.transmit_into(Digests::default(), &mut tx).unwrap();
    assert!(tx.is_empty());
}

fn tmf_response(itt: u32, response: u8) -> Pdu {
    let mut r = Pdu::new(Opcode::TaskMgmtResponse);
    r.set_itt(itt);
    r.set_byte(2, response);
    r
}

#[test]
fn abort_task_refers_to_the_command_and_terminates_it() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.submit(1, LUN, [0x28; 10], Data::Read(512));
    s.submit(2, LUN, [0x28; 10], Data::Read(512));
    let cmds = drain(&mut s);
    let start = s.task_management(50, TmfFunction::AbortTask, LUN, Some(2));
    assert_eq!(
        start,
        TmfStart {
            sent: true,
            aborted: vec![]
        }
    );
    let tmf = drain(&mut s).remove(0);
    assert_eq!(tmf.flags(), 0x81);
    assert_eq!(tmf.u32_at(20), cmds[1].itt()); // Referenced Task Tag
    assert_eq!(tmf.u32_at(32), 11); // RefCmdSN: the command's CmdSN
    assert_eq!(tmf.u32_at(24), 12); // CmdSN: the next one
    assert_eq!(
        s.receive(tmf_response(tmf.itt(), 0)).unwrap(),
        vec![
            Event::Terminated {
                tag: 2,
                reset: false
            },
            Event::TaskManagement {
                tag: 50,
                response: Ok(TmfResponse::FunctionComplete)
            }
        ]
    );
    assert_eq!(s.in_flight(), 1);
}

#[test]
fn a_task_management_request_ends_only_with_its_own_response_or_a_reject() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.submit(1, LUN, [0x28; 10], Data::Read(512));
    drain(&mut s);
    s.task_management(50, TmfFunction::LogicalUnitReset, LUN, None);
    let tmf = drain(&mut s).remove(0);
    // A SCSI Response and a Data-In with status naming the request's
    // ITT do not end it (nor turn it into a command's completion).
    let mut r = Pdu::new(Opcode::ScsiResponse);
    r.set_flags(0x80);
    r.set_itt(tmf.itt());
    assert!(s.receive(r).unwrap().is_empty());
    let d = data_in_header(tmf.itt(), 0, 0, 0x81);
    assert!(s.receive(d).unwrap().is_empty());
    assert_eq!(s.in_flight(), 2);
    // A Reject of it: "function rejected", and no command ended.
    let mut rj = Pdu::new(Opcode::Reject);
    rj.set_flags(0x80);
    rj.set_byte(2, 0x09); // invalid PDU field
    rj.data = tmf.bhs.to_vec();
    assert_eq!(
        s.receive(rj).unwrap(),
        vec![Event::TaskManagement {
            tag: 50,
            response: Ok(TmfResponse::FunctionRejected)
        }]
    );
    assert_eq!(s.in_flight(), 1);
    // Its response, should one still come, finds nothing.
    assert!(s.receive(tmf_response(tmf.itt(), 0)).unwrap().is_empty());
}

/// A Reject with `reason` of the PDU whose header is `rejected`.
fn reject(reason: u8, rejected: &Pdu) -> Pdu {
    let mut rj = Pdu::new(Opcode::Reject);
    rj.set_flags(0x80);
    rj.set_itt(RESERVED_TAG);
    rj.set_byte(2, reason);
    rj.data = rejected.bhs.to_vec();
    rj
}

#[test]
fn a_rejected_data_out_leaves_its_command_to_the_targets_response() {
    let mut s = Session::new(negotiated(true, true, 100));
    let itt = s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 16384]));
    drain(&mut s);
    s.receive(r2t(itt, 0x20, 8192, 8192)).unwrap();
    let data_out = drain(&mut s).remove(0);
    assert_eq!(data_out.opcode(), Some(Opcode::DataOut));
    // Data digest error (02h): the target discards the PDU and ends
    // the task itself (RFC 7143 11.17.1).
    assert_eq!(s.receive(reject(0x02, &data_out)).unwrap(), vec![]);
    assert_eq!(s.in_flight(), 1);
    // Its CHECK CONDITION ends the command, sense and all.
    let sense = vec![0x70, 0, 0x0b, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x47, 0x05];
    let mut r = Pdu::new(Opcode::ScsiResponse);
    r.set_flags(0x80);
    r.set_itt(itt);
    r.set_byte(3, 0x02);
    r.data = (sense.len() as u16).to_be_bytes().to_vec();
    r.data.extend_from_slice(&sense);
    let ev = s.receive(r).unwrap();
    let Event::Completed(c) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!((c.tag, c.response, c.status), (1, 0, 0x02));
    assert_eq!(c.sense, sense);
}

#[test]
fn a_command_whose_immediate_data_failed_its_digest_is_not_ended_by_the_reject() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.submit(1, LUN, [0x2a; 10], Data::Write(vec![1; 4096]));
    let cmd = drain(&mut s).remove(0);
    assert_eq!(s.receive(reject(0x02, &cmd)).unwrap(), vec![]);
    assert_eq!(s.in_flight(), 1);
}

#[test]
fn a_command_rejected_outright_ends_as_a_target_failure() {
    for reason in [0x04, 0x05, 0x09, 0x0a] {
        let mut s = Session::new(negotiated(true, true, 100));
        s.submit(7, LUN, [0x28; 10], Data::Read(512));
        let cmd = drain(&mut s).remove(0);
        let ev = s.receive(reject(reason, &cmd)).unwrap();
        assert!(
            matches!(&ev[..], [Event::Completed(c)] if c.tag == 7 && c.response == 0x01),
            "reason {reason:#x}: {ev:?}"
        );
        assert_eq!(s.in_flight(), 0);
    }
}

#[test]
fn a_command_rejected_while_the_target_waits_for_a_logout_is_kept_for_the_next_session() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.submit(7, LUN, [0x28; 10], Data::Read(512));
    let cmd = drain(&mut s).remove(0);
    let ev = s.receive(reject(0x0c, &cmd)).unwrap();
    assert_eq!(ev, vec![Event::LogoutRequested { within_secs: 0 }]);
    let again = s.take_unfinished();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, 7);
}

#[test]
fn a_rejected_send_targets_is_an_error_and_a_rejected_negotiation_just_ends() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.text_request(&[("SendTargets", "All")]);
    let req = drain(&mut s).remove(0);
    assert!(s.receive(reject(0x05, &req)).is_err());

    let mut s = Session::new(negotiated(true, true, 100));
    s.receive(async_message(4, [0, 0, 5])).unwrap();
    let req = drain(&mut s).remove(0);
    assert_eq!(s.receive(reject(0x04, &req)).unwrap(), vec![]);
    // Over: the next request is answered afresh.
    s.receive(async_message(4, [0, 0, 5])).unwrap();
    assert_eq!(drain(&mut s).len(), 1);
}

#[test]
fn a_short_reject_or_one_naming_nothing_ends_nothing() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.submit(7, LUN, [0x28; 10], Data::Read(512));
    let cmd = drain(&mut s).remove(0);
    let mut short = reject(0x04, &cmd);
    short.data.truncate(20);
    assert_eq!(s.receive(short).unwrap(), vec![]);
    let mut ping = Pdu::new(Opcode::NopOut);
    ping.set_itt(0x1234_5678);
    assert_eq!(s.receive(reject(0x04, &ping)).unwrap(), vec![]);
    assert_eq!(s.in_flight(), 1);
}

#[test]
fn answers_naming_a_command_not_sent_yet_do_not_end_it_or_skip_its_cmd_sn() {
    // Window of one command (CmdSN 10): the second waits.
    let mut s = Session::new(negotiated(true, true, 10));
    s.submit(1, LUN, [0x28; 10], Data::Read(512));
    let sink = Arc::new(MemSink(std::sync::Mutex::new(vec![0; 512])));
    let waiting = s.submit(2, LUN, [0x28; 10], Data::ReadInto(SinkRef(sink)));
    drain(&mut s);
    let mut r = Pdu::new(Opcode::ScsiResponse);
    r.set_flags(0x80);
    r.set_itt(waiting);
    assert!(s.receive(r).unwrap().is_empty());
    let d = data_in_header(waiting, 0, 512, 0x81);
    assert_eq!(s.place(&d.bhs), None);
    assert!(s.receive(d).is_err());
    let mut s = Session::new(negotiated(true, true, 10));
    s.submit(1, LUN, [0x28; 10], Data::Read(512));
    let waiting = s.submit(2, LUN, [0x28; 10], Data::Read(512));
    let first = drain(&mut s).remove(0);
    let mut r = Pdu::new(Opcode::ScsiResponse);
    r.set_flags(0x80);
    r.set_itt(waiting);
    assert!(s.receive(r).unwrap().is_empty());
    // The first one's answer opens the window: the second goes out with
    // the next CmdSN, not one past it.
    let mut r = Pdu::new(Opcode::ScsiResponse);
    r.set_flags(0x80);
    r.set_itt(first.itt());
    r.set_u32(28, 11);
    r.set_u32(32, 11);
    assert_eq!(s.receive(r).unwrap().len(), 1);
    let next = drain(&mut s);
    assert_eq!((next[0].itt(), next[0].u32_at(24)), (waiting, 11));
}

#[test]
fn a_task_management_response_naming_a_command_leaves_it_be() {
    let mut s = Session::new(negotiated(true, true, 100));
    let itt = s.submit(1, LUN, [0x28; 10], Data::Read(512));
    drain(&mut s);
    assert!(s.receive(tmf_response(itt, 0)).unwrap().is_empty());
    assert_eq!(s.in_flight(), 1);
}

#[test]
fn abort_of_a_command_not_sent_yet_is_local() {
    // The window admits one command: the second waits.
    let mut s = Session::new(negotiated(true, true, 10));
    s.submit(1, LUN, [0x28; 10], Data::Read(512));
    s.submit(2, LUN, [0x28; 10], Data::Read(512));
    assert_eq!(drain(&mut s).len(), 1);
    assert_eq!(
        s.task_management(50, TmfFunction::AbortTask, LUN, Some(2)),
        TmfStart {
            sent: false,
            aborted: vec![2]
        }
    );
    // Unknown task: nothing to do anywhere.
    assert_eq!(
        s.task_management(51, TmfFunction::AbortTask, LUN, Some(7)),
        TmfStart {
            sent: false,
            aborted: vec![]
        }
    );
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.in_flight(), 1);
}

#[test]
fn lun_reset_terminates_earlier_commands_of_that_lun_only() {
    let other = [0, 2, 0, 0, 0, 0, 0, 0];
    let mut s = Session::new(negotiated(true, true, 100));
    s.submit(1, LUN, [0x28; 10], Data::Read(512));
    s.submit(2, other, [0x28; 10], Data::Read(512));
    drain(&mut s);
    assert!(
        s.task_management(50, TmfFunction::LogicalUnitReset, LUN, None)
            .sent
    );
    let tmf = drain(&mut s).remove(0);
    // A command after the reset is not affected by it.
    s.submit(3, LUN, [0x28; 10], Data::Read(512));
    assert_eq!(
        s.receive(tmf_response(tmf.itt(), 0)).unwrap(),
        vec![
            Event::Terminated {
                tag: 1,
                reset: true
            },
            Event::TaskManagement {
                tag: 50,
                response: Ok(TmfResponse::FunctionComplete)
            }
        ]
    );
    assert_eq!(s.in_flight(), 2);
}

#[test]
fn a_rejected_function_terminates_nothing() {
    let mut s = Session::new(negotiated(true, true, 100));
    s.submit(1, LUN, [0x28; 10], Data::Read(512));
    drain(&mut s);
    s.task_management(50, TmfFunction::AbortTaskSet, LUN, None);
    let tmf = drain(&mut s).remove(0);
    assert_eq!(
        s.receive(tmf_response(tmf.itt(), 5)).unwrap(),
        vec![Event::TaskManagement {
            tag: 50,
            response: Ok(TmfResponse::NotSupported)
        }]
    );
    assert_eq!(s.in_flight(), 1);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Target opcodes, so that most generated PDUs reach the handlers.
    const TARGET_OPS: [u8; 10] = [0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f];

    fn target_pdu() -> impl Strategy<Value = Pdu> {
        (
            0..TARGET_OPS.len(),
            proptest::collection::vec(any::<u8>(), 48),
            proptest::collection::vec(any::<u8>(), 0..300),
            0u32..8,
            (any::<bool>(), 0u32..8192, any::<bool>()),
        )
            .prop_map(|(op, bhs, data, itt, (plausible, offset, placed))| {
                let mut p = Pdu::new(Opcode::from_u8(TARGET_OPS[op]).unwrap_or(Opcode::NopIn));
                p.bhs[1..].copy_from_slice(&bhs[1..]);
                // Mostly the ITTs of the commands in flight.
                if itt < 7 {
                    p.set_itt(itt + 1);
                }
                // Half within the commands' buffers, as received data
                // (placed: announced by the header, not in the PDU).
                if plausible {
                    p.set_u32(40, offset);
                    let len = data.len() as u32;
                    p.bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
                    if placed {
                        return p;
                    }
                }
                p.data = data;
                p
            })
    }

    proptest! {
        /// Whatever a target sends, the session answers with events or
        /// a protocol error, never a panic; and what it gives back for
        /// retry is consistent.
        #[test]
        fn receive_never_panics(pdus in proptest::collection::vec(target_pdu(), 1..12)) {
            let mut s = Session::new(negotiated(true, false, 100));
            s.submit(1, LUN, [0x28; 10], Data::Read(4096));
            s.submit(2, LUN, [0x2a; 10], Data::Write(vec![1; 70000]));
            s.submit(3, LUN, [0; 6], Data::None);
            let sink = Arc::new(MemSink(std::sync::Mutex::new(vec![0; 8192])));
            s.submit(6, LUN, [0x28; 10], Data::ReadInto(SinkRef(sink)));
            s.task_management(4, TmfFunction::LogicalUnitReset, LUN, None);
            s.task_management(5, TmfFunction::AbortTask, LUN, Some(1));
            let mut ended = Vec::new();
            for p in pdus {
                let _ = drain(&mut s);
                // What the Reader would ask before receiving the data.
                let _ = s.place(&p.bhs);
                let r = s.receive(p);
                // The counts receive coalescing relies on stay exact.
                prop_assert_eq!(s.awaited(), s.tasks.recount());
                let Ok(events) = r else {
                    break;
                };
                for e in events {
                    match e {
                        Event::Completed(c) => {
                            prop_assert!(!matches!(c.tag, 4 | 5), "{}", c.tag);
                            ended.push(c.tag);
                        }
                        Event::Terminated { tag, .. } => ended.push(tag),
                        // Task management requests end as such only.
                        Event::TaskManagement { tag, .. } => {
                            prop_assert!(tag == 4 || tag == 5, "{}", tag);
                            ended.push(tag);
                        }
                        _ => {}
                    }
                }
            }
            // Commands end as commands, each once at most.
            prop_assert!(ended.iter().all(|t| matches!(t, 1..=6)), "{:?}", ended);
            let mut once = ended.clone();
            once.sort_unstable();
            once.dedup();
            prop_assert_eq!(once.len(), ended.len(), "{:?}", ended);
            let _ = drain(&mut s);
            let again = s.take_unfinished();
            prop_assert_eq!(s.awaited(), Awaited::default());
            prop_assert!(again.iter().all(|c| matches!(c.0, 1..=3 | 6)));
            prop_assert_eq!(s.in_flight(), 0);
        }
    }
}
