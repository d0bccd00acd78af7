// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18), the
//! Third-party Copy VPD page (SPC-4 7.8.17) and the 3PC bit.

use super::*;

const COPY_ABORTED: u8 = 0xa;

/// Two LUs (LUN 0 and 1) of one target, with identities of their own so
/// that no other test's LUs answer to their designators.
struct Pair {
    a: Arc<LogicalUnit>,
    b: Arc<LogicalUnit>,
    target: Target,
}

fn lu(name: &str, blocks: u64, bs: u32, ro: bool) -> Arc<LogicalUnit> {
    let mut store = MemoryBackstore::new(blocks * u64::from(bs));
    if ro {
        store = store.read_only();
    }
    let lu = LogicalUnit::new(
        Arc::new(store),
        LuConfig {
            block_size: bs,
            identity: Identity::derive(&format!("/xcopy-test/{name}")),
            pr_file: None,
            pr_state: Default::default(),
            reservations: true,
        },
    );
    Arc::new(lu)
}

fn pair(name: &str, b_read_only: bool) -> Pair {
    let a = lu(&format!("{name}/a"), 2048, 512, false);
    let b = lu(&format!("{name}/b"), 1024, 512, b_read_only);
    let target = Target::new(BTreeMap::from([(0, a.clone()), (1, b.clone())]));
    Pair { a, b, target }
}

fn run_on(p: &Pair, lun: u16, cdb: &[u8], data_out: &[u8]) -> Response {
    let mut dout: &[u8] = data_out;
    match p.target.execute(
        LunAddress::Lun(lun),
        Command {
            cdb,
            nexus: &nexus(),
            data_out: &mut dout,
            data_in_len: 1 << 20,
        },
    ) {
        Outcome::Done(r) => r,
        Outcome::Io(io) => {
            let lu = if lun == 0 { &p.a } else { &p.b };
            let mut buf = match io.kind {
                IoKind::Write => data_out.to_vec(),
                _ => vec![0u8; io.len as usize],
            };
            let result = lu.run_io_sync(&io, &mut buf);
            let mut r = lu.complete_io(&io, result);
            if io.kind == IoKind::Read {
                r.data = buf;
            }
            r
        }
        Outcome::Remote(_) => unreachable!(),
    }
}

/// Identification CSCD descriptor (E4h) naming `lu` by its NAA designator.
pub(super) fn cscd(lu: &LogicalUnit, block_length: u32) -> Vec<u8> {
    let mut d = vec![
        0xe4, // DESCRIPTOR TYPE CODE: identification descriptor
        0x00, // LU ID TYPE 00b, NUL 0, PERIPHERAL DEVICE TYPE 00h
        0x00, 0x00, // RELATIVE INITIATOR PORT IDENTIFIER
        0x01, 0x03, 0x00, 0x08, // designation: binary, LU, NAA, length 8
    ];
    d.extend_from_slice(&lu.identity().naa.to_be_bytes());
    d.resize(28, 0); // rest of the designation descriptor, reserved byte 28
    d.extend_from_slice(&block_length.to_be_bytes()[1..]); // DISK BLOCK LENGTH
    d.insert(28, 0);
    d.truncate(32);
    d
}

/// Block-to-block segment descriptor (02h).
pub(super) fn segment(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut d = vec![
        0x02, 0x00, // block device to block device, DC 0, CAT 0
        0x00, 0x18, // DESCRIPTOR LENGTH 24
    ];
    d.extend_from_slice(&src.to_be_bytes()); // SOURCE CSCD DESCRIPTOR ID
    d.extend_from_slice(&dst.to_be_bytes()); // DESTINATION CSCD DESCRIPTOR ID
    d.extend_from_slice(&[0, 0]); // reserved
    d.extend_from_slice(&blocks.to_be_bytes()); // BLOCK DEVICE NUMBER OF BLOCKS
    d.extend_from_slice(&src_lba.to_be_bytes()); // SOURCE BLOCK DEVICE LBA
    d.extend_from_slice(&dst_lba.to_be_bytes()); // DESTINATION BLOCK DEVICE LBA
    d
}

/// Parameter list: header (list ID, LIST ID USAGE), CSCDs, segments.
pub(super) fn list(list_id: u8, usage: u8, cscds: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
    let cl: usize = cscds.iter().map(Vec::len).sum();
    let sl: usize = segments.iter().map(Vec::len).sum();
    let mut p = vec![list_id, usage << 3];
    p.extend_from_slice(&(cl as u16).to_be_bytes()); // CSCD DESCRIPTOR LIST LENGTH
    p.extend_from_slice(&[0; 4]); // reserved
    p.extend_from_slice(&(sl as u32).to_be_bytes()); // SEGMENT DESCRIPTOR LIST LENGTH
    p.extend_from_slice(&[0; 4]); // INLINE DATA LENGTH
    cscds
        .iter()
        .chain(segments)
        .for_each(|d| p.extend_from_slice(d));
    p
}

/// EXTENDED COPY(LID1) with a parameter list length.
pub(super) fn xcopy_cdb(plen: u32) -> [u8; 16] {
    let l = plen.to_be_bytes();
    [
        0x83, 0x00, // THIRD-PARTY COPY OUT, EXTENDED COPY(LID1)
        0, 0, 0, 0, 0, 0, 0, 0, // reserved
        l[0], l[1], l[2], l[3], // PARAMETER LIST LENGTH
        0, 0, // reserved, CONTROL
    ]
}

fn xcopy(p: &Pair, params: &[u8]) -> Response {
    run_on(p, 0, &xcopy_cdb(params.len() as u32), params)
}

/// RECEIVE COPY RESULTS with a service action and list identifier.
fn receive(sa: u8, list_id: u8) -> [u8; 16] {
    [
        0x84, sa, list_id, // THIRD-PARTY COPY IN, SERVICE ACTION, LIST IDENTIFIER
        0, 0, 0, 0, 0, 0, 0, // reserved
        0, 0, 0x04, 0, // ALLOCATION LENGTH 1024
        0, 0, // reserved, CONTROL
    ]
}

fn read(p: &Pair, lun: u16, lba: u8, blocks: u8) -> Vec<u8> {
    let r = run_on(p, lun, &[0x28, 0, 0, 0, 0, lba, 0, 0, blocks, 0], &[]);
    good(&r);
    r.data
}

#[test]
fn copies_blocks_from_one_lu_to_another() {
    let p = pair("another", false);
    let data: Vec<u8> = (0..16 * 512u32).map(|i| (i % 253) as u8).collect();
    good(&run_on(&p, 0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 16, 0], &data));
    let params = list(
        1,
        0b10,
        &[cscd(&p.a, 512), cscd(&p.b, 512)],
        &[segment(0, 1, 16, 0, 100)],
    );
    good(&xcopy(&p, &params));
    assert_eq!(read(&p, 1, 100, 16), data);
}

#[test]
fn copies_within_one_lu_naming_it_once() {
    let p = pair("within", false);
    good(&run_on(
        &p,
        0,
        &[0x2a, 0, 0, 0, 0, 3, 0, 0, 2, 0],
        &[b'A'; 1024],
    ));
    let params = list(1, 0b10, &[cscd(&p.a, 512)], &[segment(0, 0, 2, 3, 2046)]);
    good(&xcopy(&p, &params));
    let r = run_on(&p, 0, &[0x28, 0, 0, 0, 0x07, 0xfe, 0, 0, 2, 0], &[]);
    assert_eq!(r.data, vec![b'A'; 1024]);
}

#[test]
fn a_parameter_list_length_of_zero_is_good() {
    let p = pair("zero", false);
    good(&run_on(&p, 0, &xcopy_cdb(0), &[]));
}

#[test]
fn a_list_shorter_than_its_header_says_is_parameter_list_length_error() {
    let p = pair("short", false);
    let params = list(1, 0b10, &[cscd(&p.a, 512)], &[segment(0, 0, 1, 0, 1)]);
    let r = xcopy(&p, &params[..params.len() - 1]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x1a, 0x00));
    let r = xcopy(&p, &params[..16 + 31]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x1a, 0x00));
}

#[test]
fn three_cscd_descriptors_are_too_many_target_descriptors() {
    let p = pair("three", false);
    let c = cscd(&p.a, 512);
    let params = list(
        1,
        0b10,
        &[c.clone(), c.clone(), c],
        &[segment(0, 0, 1, 0, 1)],
    );
    let r = xcopy(&p, &params);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x06));
}

#[test]
fn two_segments_are_too_many_segment_descriptors() {
    let p = pair("two", false);
    let s = segment(0, 0, 1, 0, 1);
    let params = list(1, 0b10, &[cscd(&p.a, 512)], &[s.clone(), s]);
    let r = xcopy(&p, &params);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x08));
}

#[test]
fn a_list_past_the_maximum_descriptor_list_length_is_parameter_list_length_error() {
    let p = pair("long", false);
    let c = cscd(&p.a, 512);
    let segments = vec![segment(0, 0, 1, 0, 1); 36]; // 2 x 32 + 36 x 28 = 1072 > 1024
    let params = list(1, 0b10, &[c.clone(), c], &segments);
    let r = xcopy(&p, &params);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x1a, 0x00));
}

#[test]
fn a_fibre_channel_cscd_descriptor_is_an_unsupported_target_descriptor_type() {
    let p = pair("fc", false);
    let mut c = cscd(&p.a, 512);
    c[0] = 0xe0; // Fibre Channel N_Port_Name
    let r = xcopy(&p, &list(1, 0b10, &[c], &[segment(0, 0, 1, 0, 1)]));
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x07));
}

#[test]
fn a_stream_segment_is_an_unsupported_segment_descriptor_type() {
    let p = pair("stream", false);
    let mut s = segment(0, 0, 1, 0, 1);
    s[0] = 0x03; // stream device to stream device
    let r = xcopy(&p, &list(1, 0b10, &[cscd(&p.a, 512)], &[s]));
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x09));
}

#[test]
fn list_id_usage_01b_is_invalid_field_in_parameter_list() {
    let p = pair("usage", false);
    let r = xcopy(
        &p,
        &list(1, 0b01, &[cscd(&p.a, 512)], &[segment(0, 0, 1, 0, 1)]),
    );
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x00));
}

#[test]
fn a_destination_index_past_the_cscd_list_is_copy_target_device_not_reachable() {
    let p = pair("index", false);
    let r = xcopy(
        &p,
        &list(1, 0b10, &[cscd(&p.a, 512)], &[segment(0, 1, 1, 0, 1)]),
    );
    assert_eq!(sense_of(&r), (COPY_ABORTED, 0x0d, 0x02));
}

#[test]
fn a_designator_served_nowhere_is_copy_target_device_not_reachable() {
    let p = pair("nowhere", false);
    let mut c = cscd(&p.a, 512);
    c[11] ^= 0xff; // another NAA
    let r = xcopy(&p, &list(1, 0b10, &[c], &[segment(0, 0, 1, 0, 1)]));
    assert_eq!(sense_of(&r), (COPY_ABORTED, 0x0d, 0x02));
}

#[test]
fn a_segment_past_the_destination_capacity_is_copy_aborted_and_writes_nothing() {
    let p = pair("past", false);
    good(&run_on(
        &p,
        0,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 4, 0],
        &[b'B'; 2048],
    ));
    // LU b has 1024 blocks: 4 blocks from LBA 1022 overrun it.
    let params = list(
        1,
        0b10,
        &[cscd(&p.a, 512), cscd(&p.b, 512)],
        &[segment(0, 1, 4, 0, 1022)],
    );
    let r = xcopy(&p, &params);
    assert_eq!(sense_of(&r), (COPY_ABORTED, 0x00, 0x00));
    let r = run_on(&p, 1, &[0x28, 0, 0, 0, 0x03, 0xfe, 0, 0, 2, 0], &[]);
    assert_eq!(r.data, vec![0u8; 1024]);
}

#[test]
fn a_disk_block_length_other_than_the_lus_is_invalid_field_in_parameter_list() {
    let p = pair("bs", false);
    let r = xcopy(
        &p,
        &list(1, 0b10, &[cscd(&p.a, 4096)], &[segment(0, 0, 1, 0, 1)]),
    );
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x00));
    // Field pointer: byte 45 of the list (DISK BLOCK LENGTH of CSCD 0).
    assert_eq!(&r.sense[15..18], &[0x80, 0x00, 45]);
}

#[test]
fn a_segment_past_the_maximum_segment_length_is_refused() {
    let big = lu("maxseg", 131072, 512, false);
    let target = Target::new(BTreeMap::from([(0, big.clone())]));
    let p = Pair {
        a: big.clone(),
        b: big,
        target,
    };
    // 65529 blocks of 512 bytes: one past 32 MiB - 4 KiB.
    let params = list(
        1,
        0b10,
        &[cscd(&p.a, 512)],
        &[segment(0, 0, 65529, 0, 65536)],
    );
    let r = xcopy(&p, &params);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x00));
}

#[test]
fn a_read_only_destination_is_copy_aborted_write_protected() {
    let p = pair("ro", true);
    let params = list(
        1,
        0b10,
        &[cscd(&p.a, 512), cscd(&p.b, 512)],
        &[segment(0, 1, 1, 0, 0)],
    );
    let r = xcopy(&p, &params);
    assert_eq!(sense_of(&r), (COPY_ABORTED, 0x27, 0x00));
}

#[test]
fn receive_copy_status_reports_a_held_copy_and_nothing_else() {
    let p = pair("status", false);
    let r = run_on(&p, 0, &receive(0x00, 7), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    let params = list(7, 0b00, &[cscd(&p.a, 512)], &[segment(0, 0, 8, 0, 8)]);
    good(&xcopy(&p, &params));
    let r = run_on(&p, 0, &receive(0x00, 7), &[]);
    good(&r);
    assert_eq!(
        r.data,
        vec![
            0, 0, 0, 8,    // AVAILABLE DATA
            0x01, // HDD 0, COPY MANAGER STATUS: completed without errors
            0, 1,    // SEGMENTS PROCESSED
            0x00, // TRANSFER COUNT UNITS: bytes
            0, 0, 0x10, 0, // TRANSFER COUNT 4096
        ]
    );
    // A copy with LIST ID USAGE 10b leaves nothing to report.
    good(&xcopy(
        &p,
        &list(8, 0b10, &[cscd(&p.a, 512)], &[segment(0, 0, 1, 0, 1)]),
    ));
    let r = run_on(&p, 0, &receive(0x00, 8), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn receive_copy_failure_details_carries_the_sense_of_a_failed_held_copy() {
    let p = pair("failure", false);
    let params = list(9, 0b00, &[cscd(&p.a, 512)], &[segment(0, 1, 1, 0, 1)]);
    assert_eq!(sense_of(&xcopy(&p, &params)), (COPY_ABORTED, 0x0d, 0x02));
    let r = run_on(&p, 0, &receive(0x00, 9), &[]);
    good(&r);
    assert_eq!(r.data[4], 0x02, "completed with an error");
    let r = run_on(&p, 0, &receive(0x04, 9), &[]);
    good(&r);
    assert_eq!(r.data[56], 0x02); // COPY COMMAND STATUS: CHECK CONDITION
    assert_eq!(&r.data[58..60], &[0, 18]); // SENSE DATA LENGTH
    assert_eq!(
        (r.data[62] & 0x0f, r.data[72], r.data[73]),
        (COPY_ABORTED, 0x0d, 0x02)
    );
}

#[test]
fn receive_copy_operating_parameters_states_the_limits() {
    let p = pair("params", false);
    let r = run_on(&p, 0, &receive(0x03, 0), &[]);
    good(&r);
    assert_eq!(
        r.data,
        vec![
            0, 0, 0, 42, // AVAILABLE DATA
            0x01, 0, 0, 0, // SNLID; reserved
            0, 2, // MAXIMUM CSCD DESCRIPTOR COUNT
            0, 1, // MAXIMUM SEGMENT DESCRIPTOR COUNT
            0, 0, 0x04, 0, // MAXIMUM DESCRIPTOR LIST LENGTH 1024
            0x01, 0xff, 0xf0, 0x00, // MAXIMUM SEGMENT LENGTH 32 MiB - 4 KiB
            0, 0, 0, 0, // MAXIMUM INLINE DATA LENGTH
            0, 0, 0, 0, // HELD DATA LIMIT
            0, 0, 0, 0, // MAXIMUM STREAM DEVICE TRANSFER SIZE
            0, 0, 0, 16, // reserved, TOTAL CONCURRENT COPIES
            16, 9, 0,
            0, // MAXIMUM CONCURRENT COPIES, DATA SEGMENT GRANULARITY 2^9, inline, held
            0, 0, 0, 2, // reserved, IMPLEMENTED DESCRIPTOR LIST LENGTH
            0x02, 0xe4, // block to block segment, identification CSCD
        ]
    );
}

#[test]
fn third_party_copy_page_lists_the_lid1_commands_and_limits() {
    let p = pair("vpd", false);
    let r = run_on(&p, 0, &[0x12, 0x01, 0x8f, 0x00, 0xff, 0x00], &[]);
    good(&r);
    let d = &r.data;
    assert_eq!(&d[0..2], &[0x00, 0x8f]);
    assert_eq!(
        &d[4..16],
        &[
            0x00, 0x01, 0x00, 0x0c, // Supported Commands, length 12
            8, 0x83, 1, 0x00, 0x84, 3, 0x00, 0x03,
        ]
    );
    assert_eq!(d[16], 0x04); // ... the last service action, 04h
                             // Parameter Data: type 0004h, length 28, MAXIMUM CSCD DESCRIPTOR COUNT 2.
    assert_eq!(&d[20..24], &[0x00, 0x04, 0x00, 0x1c]);
    assert_eq!(&d[28..30], &[0, 2]);
    // Supported Descriptors: 02h and E4h.
    assert_eq!(&d[52..59], &[0x00, 0x08, 0x00, 0x04, 2, 0x02, 0xe4]);
    let total = usize::from(u16::from_be_bytes([d[2], d[3]])) + 4;
    assert_eq!(d.len(), total);
    // General Copy Operations last: type 8001h, length 32.
    assert_eq!(&d[total - 36..total - 32], &[0x80, 0x01, 0x00, 0x20]);
}

#[test]
fn standard_inquiry_sets_3pc() {
    let p = pair("3pc", false);
    let r = run_on(&p, 0, &[0x12, 0, 0, 0, 36, 0], &[]);
    good(&r);
    assert_eq!(r.data[5] & 0x08, 0x08);
}

#[test]
fn a_logical_unit_reset_discards_held_results() {
    let p = pair("reset", false);
    good(&xcopy(
        &p,
        &list(3, 0b00, &[cscd(&p.a, 512)], &[segment(0, 0, 1, 0, 1)]),
    ));
    good(&run_on(&p, 0, &receive(0x00, 3), &[]));
    p.a.lun_reset();
    // The unit attention first, then nothing held.
    let _ = run_on(&p, 0, &[0x00, 0, 0, 0, 0, 0], &[]);
    let r = run_on(&p, 0, &receive(0x00, 3), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}
