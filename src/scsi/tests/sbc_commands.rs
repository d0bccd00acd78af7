// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! VERIFY(12), WRITE AND VERIFY(12), PRE-FETCH(10)/(16), ORWRITE(16) and
//! READ DEFECT DATA(10)/(12) (SBC-4 5.9-5.16, 5.45, 5.53).

use super::*;

const MISCOMPARE: u8 = 0xe;

/// Write `data` at `lba` with WRITE(10).
fn write10(f: &Fixture, lba: u8, data: &[u8]) {
    let blocks = (data.len() / 512) as u8;
    good(&run(f, &[0x2a, 0, 0, 0, 0, lba, 0, 0, blocks, 0], data));
}

/// READ(10) of `blocks` blocks at `lba`.
fn read10(f: &Fixture, lba: u8, blocks: u8) -> Vec<u8> {
    let r = run(f, &[0x28, 0, 0, 0, 0, lba, 0, 0, blocks, 0], &[]);
    good(&r);
    r.data
}

#[test]
fn verify12_with_bytchk_01_compares_every_block() {
    let f = fixture();
    write10(&f, 5, &[0x3c; 1024]);
    let cdb = [
        0xaf, // VERIFY(12)
        0x02, // VRPROTECT 0, DPO 0, BYTCHK 01b
        0, 0, 0, 5, // LOGICAL BLOCK ADDRESS 5
        0, 0, 0, 2, // VERIFICATION LENGTH 2
        0, 0, // GROUP NUMBER, CONTROL
    ];
    good(&run(&f, &cdb, &[0x3c; 1024]));
    let mut other = vec![0x3c; 1024];
    other[700] = 0;
    let r = run(&f, &cdb, &other);
    assert_eq!(sense_of(&r), (MISCOMPARE, 0x1d, 0x00));
    // INFORMATION: the offset of the first byte that differs.
    assert_eq!(r.sense[0], 0xf0);
    assert_eq!(&r.sense[3..7], &700u32.to_be_bytes());
}

#[test]
fn verify12_with_bytchk_00_verifies_the_medium_without_data_out() {
    let f = fixture();
    good(&run(
        &f,
        &[0xaf, 0x00, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0],
        &[],
    ));
}

#[test]
fn verify12_with_bytchk_10_is_invalid_field_in_cdb_at_bit_2() {
    let f = fixture();
    let r = run(&f, &[0xaf, 0x04, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // SKSV, C/D, BPV, bit 2; byte 1.
    assert_eq!(&r.sense[15..18], &[0xca, 0x00, 0x01]);
}

#[test]
fn verify12_with_vrprotect_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(&f, &[0xaf, 0x20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn verify12_past_the_last_block_is_lba_out_of_range() {
    let f = fixture();
    // LBA 2047, 2 blocks: one past the 2048-block medium.
    let r = run(&f, &[0xaf, 0x00, 0, 0, 0x07, 0xff, 0, 0, 0, 2, 0, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}

#[test]
fn write_and_verify12_writes_and_checks_the_data() {
    let f = fixture();
    let cdb = [
        0xae, // WRITE AND VERIFY(12)
        0x02, // WRPROTECT 0, DPO 0, BYTCHK 1
        0, 0, 0, 9, // LOGICAL BLOCK ADDRESS 9
        0, 0, 0, 1, // TRANSFER LENGTH 1
        0, 0, // GROUP NUMBER, CONTROL
    ];
    good(&run(&f, &cdb, &[0x81; 512]));
    assert_eq!(read10(&f, 9, 1), vec![0x81; 512]);
}

#[test]
fn write_and_verify12_past_the_last_block_is_lba_out_of_range() {
    let f = fixture();
    let r = run(
        &f,
        &[0xae, 0x00, 0, 0, 0x08, 0x00, 0, 0, 0, 1, 0, 0],
        &[0x81; 512],
    );
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}

#[test]
fn write_and_verify12_with_wrprotect_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(
        &f,
        &[0xae, 0x20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        &[0x81; 512],
    );
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

/// PRE-FETCH(10) of `blocks` at `lba`, `flags` in byte 1 (IMMED 02h).
fn prefetch10(flags: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let [a, b, c, d] = lba.to_be_bytes();
    let [e, g] = blocks.to_be_bytes();
    [
        0x34, flags, // PRE-FETCH(10), IMMED
        a, b, c, d,    // LOGICAL BLOCK ADDRESS
        0x03, // GROUP NUMBER 3
        e, g,    // PREFETCH LENGTH
        0x00, // CONTROL
    ]
}

#[test]
fn prefetch10_answers_good_not_condition_met() {
    let f = fixture();
    let r = run(&f, &prefetch10(0x00, 0, 16), &[]);
    assert_eq!(r.status, 0x00, "GOOD: the page cache promises nothing");
    let r = run(&f, &prefetch10(0x02, 2032, 16), &[]);
    assert_eq!(r.status, 0x00);
}

#[test]
fn prefetch10_of_zero_blocks_reaches_to_the_last_block() {
    let f = fixture();
    good(&run(&f, &prefetch10(0x00, 0, 0), &[]));
    good(&run(&f, &prefetch10(0x00, 2047, 0), &[]));
    let r = run(&f, &prefetch10(0x00, 2048, 0), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}

#[test]
fn prefetch10_past_the_last_block_is_lba_out_of_range() {
    let f = fixture();
    let r = run(&f, &prefetch10(0x00, 2047, 2), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
    let r = run(&f, &prefetch10(0x00, u32::MAX, 1), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}

#[test]
fn prefetch10_reserved_bit_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(&f, &prefetch10(0x01, 0, 1), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // SKSV, C/D, BPV, bit 0; byte 1.
    assert_eq!(&r.sense[15..18], &[0xc8, 0x00, 0x01]);
}

#[test]
fn prefetch16_of_the_whole_medium_is_good() {
    let f = fixture();
    let cdb = [
        0x90, 0x02, // PRE-FETCH(16), IMMED
        0, 0, 0, 0, 0, 0, 0, 0, // LOGICAL BLOCK ADDRESS 0
        0, 0, 0x08, 0, // PREFETCH LENGTH 2048
        0, 0, // GROUP NUMBER, CONTROL
    ];
    good(&run(&f, &cdb, &[]));
}

/// ORWRITE(16) of `blocks` at `lba`, `flags` in byte 1.
fn orwrite(flags: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [
        0x8b, flags, // ORWRITE(16), ORPROTECT/DPO/FUA
        l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], // LOGICAL BLOCK ADDRESS
        n[0], n[1], n[2], n[3], // TRANSFER LENGTH
        0, 0, // GROUP NUMBER, CONTROL
    ]
}

#[test]
fn orwrite_ors_the_data_out_into_the_blocks() {
    let f = fixture();
    write10(&f, 20, &[0x00; 1024]);
    good(&run(&f, &orwrite(0, 20, 2), &[0xa5; 1024]));
    assert_eq!(read10(&f, 20, 2), vec![0xa5; 1024]);
    good(&run(&f, &orwrite(0x08, 20, 2), &[0x5a; 1024]));
    assert_eq!(read10(&f, 20, 2), vec![0xff; 1024]);
}

#[test]
fn orwrite_of_zero_blocks_is_good_and_writes_nothing() {
    let f = fixture();
    good(&run(&f, &orwrite(0, 0, 0), &[]));
    assert_eq!(read10(&f, 0, 1), vec![0; 512]);
}

#[test]
fn orwrite_past_the_last_block_is_lba_out_of_range() {
    let f = fixture();
    let r = run(&f, &orwrite(0, 2047, 2), &[0xa5; 1024]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}

#[test]
fn orwrite_with_orprotect_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(&f, &orwrite(0x20, 0, 1), &[0xa5; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn orwrite_with_too_little_data_out_writes_nothing() {
    let f = fixture();
    let r = run(&f, &orwrite(0, 0, 2), &[0xa5; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    assert_eq!(read10(&f, 0, 1), vec![0; 512]);
}

#[test]
fn orwrite_on_a_read_only_lu_is_write_protected() {
    let f = fixture_with(64, 512, true);
    let r = run(&f, &orwrite(0, 0, 1), &[0xa5; 512]);
    assert_eq!(sense_of(&r), (0x7, 0x27, 0x00));
}

#[test]
fn read_defect_data10_returns_the_empty_lists_asked_for() {
    let f = fixture();
    let cdb = [
        0x37, 0x00, // READ DEFECT DATA(10)
        0x18, // REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT 000b (short block)
        0, 0, 0, 0, // reserved
        0x00, 0x20, // ALLOCATION LENGTH 32
        0x00, // CONTROL
    ];
    let r = run(&f, &cdb, &[]);
    good(&r);
    // PLISTV, GLISTV, format 000b; DEFECT LIST LENGTH 0.
    assert_eq!(r.data, vec![0x00, 0x18, 0x00, 0x00]);
}

#[test]
fn read_defect_data10_answers_in_the_format_asked_for() {
    let f = fixture();
    // Physical sector format (101b), no list requested.
    let r = run(&f, &[0x37, 0, 0x05, 0, 0, 0, 0, 0, 0x20, 0], &[]);
    good(&r);
    assert_eq!(r.data, vec![0x00, 0x05, 0x00, 0x00]);
}

#[test]
fn read_defect_data10_vendor_specific_format_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(&f, &[0x37, 0, 0x06, 0, 0, 0, 0, 0, 0x20, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // SKSV, C/D, BPV, bit 2; byte 2.
    assert_eq!(&r.sense[15..18], &[0xca, 0x00, 0x02]);
}

#[test]
fn read_defect_data10_allocation_length_truncates_the_header() {
    let f = fixture();
    let r = run(&f, &[0x37, 0, 0x18, 0, 0, 0, 0, 0, 0x02, 0], &[]);
    good(&r);
    assert_eq!(r.data, vec![0x00, 0x18]);
}

#[test]
fn read_defect_data12_returns_an_eight_byte_header() {
    let f = fixture();
    let cdb = [
        0xb7, // READ DEFECT DATA(12)
        0x0b, // REQ_GLIST, DEFECT LIST FORMAT 011b (long block)
        0, 0, 0, 0, // ADDRESS DESCRIPTOR INDEX 0
        0, 0, 0, 0x20, // ALLOCATION LENGTH 32
        0, 0, // reserved, CONTROL
    ];
    let r = run(&f, &cdb, &[]);
    good(&r);
    // GLISTV, format 011b; GENERATION CODE 0; DEFECT LIST LENGTH 0.
    assert_eq!(r.data, vec![0x00, 0x0b, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn report_supported_opcodes_gives_the_usage_data_of_verify12() {
    let f = fixture();
    let cdb = [
        0xa3, 0x0c, // MAINTENANCE IN, REPORT SUPPORTED OPERATION CODES
        0x01, // REPORTING OPTIONS 001b: one command, no service action
        0xaf, // REQUESTED OPERATION CODE: VERIFY(12)
        0, 0, // REQUESTED SERVICE ACTION
        0, 0, 0, 0x40, // ALLOCATION LENGTH 64
        0, 0, // reserved, CONTROL
    ];
    let r = run(&f, &cdb, &[]);
    good(&r);
    assert_eq!(
        r.data,
        vec![
            0x00, 0x03, 0x00, 0x0c, // SUPPORT 011b, CDB SIZE 12
            0xaf, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04,
        ]
    );
}
