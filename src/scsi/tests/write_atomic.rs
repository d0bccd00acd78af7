// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! WRITE ATOMIC(16) (SBC-4 5.48) and the atomic fields of the Block
//! Limits page (SBC-4 6.6.4): offered on a null LU, not on a file that
//! cannot write atomically.

use super::*;

/// WRITE ATOMIC(16) of `blocks` at `lba`, `flags` in byte 1, `boundary`.
fn write_atomic16(flags: u8, lba: u64, boundary: u16, blocks: u16) -> [u8; 16] {
    let l = lba.to_be_bytes();
    let [b0, b1] = boundary.to_be_bytes();
    let [n0, n1] = blocks.to_be_bytes();
    [
        0x9c, flags, // WRITE ATOMIC(16), WRPROTECT/DPO/FUA
        l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], // LOGICAL BLOCK ADDRESS
        b0, b1, // ATOMIC BOUNDARY
        n0, n1, // TRANSFER LENGTH
        0, 0, // GROUP NUMBER, CONTROL
    ]
}

const INQUIRY_B0: [u8; 6] = [0x12, 0x01, 0xb0, 0x00, 0x40, 0x00];

#[test]
fn a_null_lu_offers_atomic_writes_up_to_the_maximum_transfer_length() {
    let f = fixture_null(1 << 20, 512);
    let r = run(&f, &INQUIRY_B0, &[]);
    good(&r);
    // MAXIMUM ATOMIC TRANSFER LENGTH 65528, ATOMIC ALIGNMENT 1, ATOMIC
    // TRANSFER LENGTH GRANULARITY 1, no atomic boundary (0, 0).
    assert_eq!(
        &r.data[44..64],
        &[
            0, 0, 0xff, 0xf8, 0, 0, 0, 1, 0, 0, 0, 1, // max, alignment, granularity
            0, 0, 0, 0, 0, 0, 0, 0, // with boundary, boundary size
        ]
    );
    good(&run(&f, &write_atomic16(0x08, 7, 0, 3), &[0x5a; 1536]));
}

#[test]
fn write_atomic_past_the_end_is_lba_out_of_range_before_any_limit() {
    let f = fixture_null(2048, 512);
    let r = run(&f, &write_atomic16(0, 2047, 0, 2), &[0; 1024]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
    let r = run(&f, &write_atomic16(0, u64::MAX, 0, 0), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}

#[test]
fn write_atomic_of_zero_blocks_is_good() {
    let f = fixture_null(2048, 512);
    good(&run(&f, &write_atomic16(0, 0, 0, 0), &[]));
}

#[test]
fn write_atomic_with_an_atomic_boundary_is_invalid_field_in_cdb() {
    let f = fixture_null(2048, 512);
    let r = run(&f, &write_atomic16(0, 0, 8, 1), &[0; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // SKSV, C/D, byte 10 (ATOMIC BOUNDARY).
    assert_eq!(&r.sense[15..18], &[0xc0, 0x00, 0x0a]);
}

#[test]
fn write_atomic_with_wrprotect_is_invalid_field_in_cdb() {
    let f = fixture_null(2048, 512);
    let r = run(&f, &write_atomic16(0x20, 0, 0, 1), &[0; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn write_atomic_with_too_little_data_out_is_invalid_field_in_cdb() {
    let f = fixture_null(2048, 512);
    let r = run(&f, &write_atomic16(0, 0, 0, 2), &[0; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn a_file_without_untorn_writes_offers_no_atomicity() {
    let f = fixture();
    let r = run(&f, &INQUIRY_B0, &[]);
    good(&r);
    assert_eq!(&r.data[44..64], &[0u8; 20][..]);
    let r = run(&f, &write_atomic16(0, 0, 0, 1), &[0; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x20, 0x00));
    // REPORT SUPPORTED OPERATION CODES, one command: 9Ch not supported.
    let r = run(
        &f,
        &[0xa3, 0x0c, 0x01, 0x9c, 0, 0, 0, 0, 0, 0x40, 0, 0],
        &[],
    );
    good(&r);
    assert_eq!(r.data, vec![0x00, 0x01, 0x00, 0x00]);
}

#[test]
fn the_list_of_all_commands_has_write_atomic_only_where_it_is_offered() {
    let all = [0xa3, 0x0c, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
    let lists = |f: &Fixture| {
        let r = run(f, &all, &[]);
        good(&r);
        r.data[4..].chunks(8).any(|d| d[0] == 0x9c)
    };
    assert!(lists(&fixture_null(2048, 512)));
    assert!(!lists(&fixture()));
}
