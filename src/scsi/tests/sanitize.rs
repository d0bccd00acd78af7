// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SANITIZE (SBC-4 4.11, 5.28): the service actions, their parameter
//! lists, and how the logical unit answers while an operation runs or
//! after one failed.

use super::*;

const NOT_READY: u8 = 0x2;
const MEDIUM_ERROR: u8 = 0x3;

/// SANITIZE with `byte1` (IMMED 80h, AUSE 20h, service action) and a
/// parameter list length.
fn sanitize(byte1: u8, plen: u16) -> [u8; 10] {
    let [hi, lo] = plen.to_be_bytes();
    [
        0x48, byte1, // SANITIZE, IMMED/ZNR/AUSE/SERVICE ACTION
        0, 0, 0, 0, 0, // reserved
        hi, lo,   // PARAMETER LIST LENGTH
        0x00, // CONTROL
    ]
}

/// The OVERWRITE parameter list (SBC-4 table 5.28.3.2) for `pattern`.
fn overwrite_list(byte0: u8, pattern: &[u8]) -> Vec<u8> {
    let [hi, lo] = (pattern.len() as u16).to_be_bytes();
    // INVERT/TEST/OVERWRITE COUNT, reserved, INITIALIZATION PATTERN LENGTH.
    let mut p = vec![byte0, 0x00, hi, lo];
    p.extend_from_slice(pattern);
    p
}

fn read_block(f: &Fixture, lba: u16) -> Vec<u8> {
    let [hi, lo] = lba.to_be_bytes();
    let r = run(f, &[0x28, 0, 0, 0, hi, lo, 0, 0, 1, 0], &[]);
    good(&r);
    r.data
}

/// Sense-key specific bytes 15-17 of fixed-format sense.
fn sks(r: &Response) -> [u8; 3] {
    r.sense[15..18].try_into().unwrap()
}

#[test]
fn overwrite_writes_the_pattern_over_every_block_before_good() {
    let f = fixture();
    good(&run(&f, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[b'a'; 512]));
    let list = overwrite_list(0x01, &[0xaa; 512]);
    good(&run(&f, &sanitize(0x01, list.len() as u16), &list));
    assert_eq!(read_block(&f, 0), vec![0xaa; 512]);
    assert_eq!(read_block(&f, 2047), vec![0xaa; 512]);
}

#[test]
fn overwrite_repeats_a_short_pattern_from_the_start_of_each_block() {
    let f = fixture();
    let list = overwrite_list(0x01, &[1, 2, 3]);
    good(&run(&f, &sanitize(0x01, list.len() as u16), &list));
    let block = read_block(&f, 7);
    assert_eq!(&block[..6], &[1, 2, 3, 1, 2, 3]);
    assert_eq!(block[510..], [1, 2]);
}

#[test]
fn overwrite_with_invert_ends_with_the_pattern_itself() {
    let f = fixture();
    // INVERT, OVERWRITE COUNT 2: the first pass inverted, the last not.
    let list = overwrite_list(0x82, &[0x0f]);
    good(&run(&f, &sanitize(0x01, list.len() as u16), &list));
    assert_eq!(read_block(&f, 100), vec![0x0f; 512]);
}

#[test]
fn overwrite_parameter_list_length_of_4_or_less_or_a_block_plus_5_is_invalid_field_in_cdb() {
    let f = fixture();
    for plen in [0u16, 1, 4, 517] {
        let r = run(&f, &sanitize(0x01, plen), &vec![0u8; 520]);
        assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00), "{plen}");
        // Field pointer: SKSV, C/D, byte 7 (PARAMETER LIST LENGTH).
        assert_eq!(sks(&r), [0xc0, 0x00, 0x07]);
    }
}

#[test]
fn overwrite_count_zero_is_invalid_field_in_parameter_list() {
    let f = fixture();
    let list = overwrite_list(0x00, &[0xaa; 8]);
    let r = run(&f, &sanitize(0x01, list.len() as u16), &list);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x00));
    // SKSV, C/D 0 (parameter list), BPV, bit 4; byte 0.
    assert_eq!(sks(&r), [0x8c, 0x00, 0x00]);
}

#[test]
fn initialization_pattern_length_zero_or_past_a_block_is_invalid_field_in_parameter_list() {
    let f = fixture();
    let mut list = overwrite_list(0x01, &[0xaa; 8]);
    list[2..4].copy_from_slice(&[0, 0]);
    let r = run(&f, &sanitize(0x01, list.len() as u16), &list);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x00));
    let mut list = overwrite_list(0x01, &[0xaa; 512]);
    list[2..4].copy_from_slice(&516u16.to_be_bytes());
    let r = run(&f, &sanitize(0x01, list.len() as u16), &list);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x00));
    assert_eq!(sks(&r), [0x80, 0x00, 0x02]);
}

#[test]
fn overwrite_test_field_is_invalid_field_in_parameter_list() {
    let f = fixture();
    let list = overwrite_list(0x21, &[0xaa; 8]);
    let r = run(&f, &sanitize(0x01, list.len() as u16), &list);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x00));
    assert_eq!(sks(&r), [0x8e, 0x00, 0x00]);
}

#[test]
fn block_erase_with_immed_deallocates_every_block() {
    let f = fixture();
    good(&run(
        &f,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 16, 0],
        &[b'a'; 16 * 512],
    ));
    good(&run(&f, &sanitize(0x80 | 0x02, 0), &[]));
    assert!(f.lu.sanitizer().wait_done());
    assert_eq!(read_block(&f, 3), vec![0; 512]);
    // GET LBA STATUS from LBA 0: one deallocated extent, the whole LU.
    let r = run(
        &f,
        &[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0],
        &[],
    );
    good(&r);
    assert_eq!(&r.data[8..21], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0, 1]);
}

#[test]
fn block_erase_with_a_parameter_list_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(&f, &sanitize(0x02, 8), &[0; 8]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    assert_eq!(sks(&r), [0xc0, 0x00, 0x07]);
}

#[test]
fn cryptographic_erase_is_not_offered() {
    let f = fixture();
    let r = run(&f, &sanitize(0x03, 0), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // SKSV, C/D, BPV, bit 4; byte 1 (SERVICE ACTION).
    assert_eq!(sks(&r), [0xcc, 0x00, 0x01]);
}

#[test]
fn exit_failure_mode_with_a_parameter_list_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(&f, &sanitize(0x1f, 8), &[0; 8]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn exit_failure_mode_with_nothing_to_exit_is_good() {
    let f = fixture();
    good(&run(&f, &sanitize(0x1f, 0), &[]));
}

#[test]
fn while_running_commands_get_sanitize_in_progress_with_the_progress() {
    let f = fixture();
    f.lu.sanitizer().force_running(1 << 20, 4 << 20);
    for cdb in [
        &[0x00, 0, 0, 0, 0, 0][..],             // TEST UNIT READY
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0][..], // READ(10)
        &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], // READ CAPACITY(10)
        &sanitize(0x02, 0)[..],                 // SANITIZE
    ] {
        let r = run(&f, cdb, &[0u8; 512]);
        assert_eq!(sense_of(&r), (NOT_READY, 0x04, 0x1b), "{cdb:02x?}");
        // SKSV, PROGRESS INDICATION 4000h (a quarter done).
        assert_eq!(sks(&r), [0x80, 0x40, 0x00]);
    }
}

#[test]
fn while_running_inquiry_report_luns_and_request_sense_are_processed() {
    let f = fixture();
    f.lu.sanitizer().force_running(3 << 20, 4 << 20);
    good(&run(&f, &[0x12, 0, 0, 0, 36, 0], &[]));
    good(&run(&f, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]));
    let r = run(&f, &[0x03, 0, 0, 0, 18, 0], &[]);
    good(&r);
    assert_eq!((r.data[2], r.data[12], r.data[13]), (NOT_READY, 0x04, 0x1b));
    assert_eq!(&r.data[15..18], &[0x80, 0xc0, 0x00]);
}

#[test]
fn after_a_failure_with_ause_medium_access_fails_until_exit_failure_mode() {
    let f = fixture();
    f.lu.sanitizer().force_failed(true);
    let r = run(&f, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    assert_eq!(sense_of(&r), (MEDIUM_ERROR, 0x31, 0x03));
    good(&run(&f, &[0x12, 0, 0, 0, 36, 0], &[]));
    let r = run(&f, &[0x03, 0, 0, 0, 18, 0], &[]);
    assert_eq!(
        (r.data[2], r.data[12], r.data[13]),
        (MEDIUM_ERROR, 0x31, 0x03)
    );
    good(&run(&f, &sanitize(0x1f, 0), &[]));
    good(&run(&f, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));
}

#[test]
fn after_a_failure_without_ause_only_a_new_sanitize_ends_failure_mode() {
    let f = fixture();
    f.lu.sanitizer().force_failed(false);
    let r = run(&f, &sanitize(0x1f, 0), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // Nor may the new one ask for the unrestricted mode (AUSE).
    let r = run(&f, &sanitize(0x20 | 0x02, 0), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    good(&run(&f, &sanitize(0x02, 0), &[]));
    good(&run(&f, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));
}

#[test]
fn sanitize_on_a_read_only_lu_is_write_protected() {
    let f = fixture_with(64, 512, true);
    let r = run(&f, &sanitize(0x02, 0), &[]);
    assert_eq!(sense_of(&r), (0x7, 0x27, 0x00));
}

#[test]
fn block_device_characteristics_say_reads_after_block_erase_succeed() {
    let f = fixture();
    let r = run(&f, &[0x12, 0x01, 0xb1, 0x00, 0x40, 0x00], &[]);
    good(&r);
    // Byte 7: WABEREQ 01b, WACEREQ 00b, NOMINAL FORM FACTOR 0.
    assert_eq!(r.data[7], 0x40);
}

#[test]
fn report_supported_opcodes_has_overwrite_and_not_cryptographic_erase() {
    let f = fixture();
    let one = |sa: u8| {
        let cdb = [
            0xa3, 0x0c, // REPORT SUPPORTED OPERATION CODES
            0x02, // REPORTING OPTIONS 010b: opcode and service action
            0x48, // SANITIZE
            0x00, sa, // REQUESTED SERVICE ACTION
            0, 0, 0, 0x40, // ALLOCATION LENGTH
            0, 0, // reserved, CONTROL
        ];
        let r = run(&f, &cdb, &[]);
        good(&r);
        r.data
    };
    assert_eq!(
        one(0x01),
        vec![
            0x00, 0x03, 0x00, 0x0a, // SUPPORT 011b, CDB SIZE 10
            0x48, 0xe1, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04, // IMMED/ZNR/AUSE + SA 01h
        ]
    );
    // SUPPORT 001b: not supported.
    assert_eq!(one(0x03), vec![0x00, 0x01, 0x00, 0x00]);
}
