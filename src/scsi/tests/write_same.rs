// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! WRITE SAME(10)/(16) (SBC-4 5.49, 5.50): the Data-Out Buffer and the
//! length limit.

use super::*;

/// WRITE SAME(10): LBA 16, one block.
const WS10_ONE_BLOCK: [u8; 10] = [
    0x41, // WRITE SAME(10)
    0x00, // WRPROTECT 0, ANCHOR 0, UNMAP 0
    0x00, 0x00, 0x00, 0x10, // LOGICAL BLOCK ADDRESS 16
    0x00, // GROUP NUMBER
    0x00, 0x01, // NUMBER OF LOGICAL BLOCKS 1
    0x00, // CONTROL
];

#[test]
fn write_same10_with_half_a_block_of_data_out_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(&f, &WS10_ONE_BLOCK, &[0xa6; 256]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn write_same10_with_two_blocks_of_data_out_is_invalid_field_in_cdb_and_writes_nothing() {
    let f = fixture();
    let r = run(&f, &WS10_ONE_BLOCK, &[0xa6; 1024]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    let back = run(&f, &[0x28, 0, 0, 0, 0, 0x10, 0, 0, 1, 0], &[]);
    assert_eq!(back.data, vec![0u8; 512]);
}

#[test]
fn write_same16_unmap_with_two_blocks_of_data_out_is_invalid_field_in_cdb() {
    let f = fixture();
    let cdb = [
        0x93, // WRITE SAME(16)
        0x08, // UNMAP
        0, 0, 0, 0, 0, 0, 0, 0, // LOGICAL BLOCK ADDRESS 0
        0, 0, 0, 1, // NUMBER OF LOGICAL BLOCKS 1
        0, 0, // GROUP NUMBER, CONTROL
    ];
    let r = run(&f, &cdb, &[0u8; 1024]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn write_same16_ndob_takes_no_data_out_and_writes_zeros() {
    let f = fixture();
    good(&run(&f, &[0x2a, 0, 0, 0, 0, 4, 0, 0, 2, 0], &[0x55; 1024]));
    let cdb = [
        0x93, // WRITE SAME(16)
        0x01, // NDOB
        0, 0, 0, 0, 0, 0, 0, 4, // LOGICAL BLOCK ADDRESS 4
        0, 0, 0, 2, // NUMBER OF LOGICAL BLOCKS 2
        0, 0, // GROUP NUMBER, CONTROL
    ];
    good(&run(&f, &cdb, &[]));
    let back = run(&f, &[0x28, 0, 0, 0, 0, 4, 0, 0, 2, 0], &[]);
    assert_eq!(back.data, vec![0u8; 1024]);
}

#[test]
fn write_same16_ndob_with_a_data_out_buffer_is_invalid_field_in_cdb() {
    let f = fixture();
    let cdb = [
        0x93, 0x01, // WRITE SAME(16), NDOB
        0, 0, 0, 0, 0, 0, 0, 0, // LOGICAL BLOCK ADDRESS 0
        0, 0, 0, 1, // NUMBER OF LOGICAL BLOCKS 1
        0, 0, // GROUP NUMBER, CONTROL
    ];
    let r = run(&f, &cdb, &[0u8; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn write_same10_on_a_4096_byte_lu_takes_one_4096_byte_block() {
    let f = fixture_with(64, 4096, false);
    let r = run(&f, &WS10_ONE_BLOCK, &[0x5a; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    good(&run(&f, &WS10_ONE_BLOCK, &[0x5a; 4096]));
    let back = run(&f, &[0x28, 0, 0, 0, 0, 0x10, 0, 0, 1, 0], &[]);
    assert_eq!(back.data, vec![0x5a; 4096]);
}

/// WRITE SAME(16) at LBA 0 of `blocks` blocks, `flags` in byte 1.
fn ws16(flags: u8, blocks: u32) -> [u8; 16] {
    let [a, b, c, d] = blocks.to_be_bytes();
    [
        0x93, flags, // WRITE SAME(16), UNMAP (08h) / NDOB (01h)
        0, 0, 0, 0, 0, 0, 0, 0, // LOGICAL BLOCK ADDRESS 0
        a, b, c, d, // NUMBER OF LOGICAL BLOCKS
        0, 0, // GROUP NUMBER, CONTROL
    ]
}

/// MAXIMUM WRITE SAME LENGTH for 512-byte blocks: 65528 (32 MiB - 4 KiB).
const LIMIT_512: u32 = 65528;

/// A 512-byte LU one block larger than the limit.
fn big_fixture() -> Fixture {
    fixture_with(u64::from(LIMIT_512) + 1, 512, false)
}

#[test]
fn block_limits_page_reports_the_write_same_limit() {
    let f = fixture();
    let r = run(&f, &[0x12, 0x01, 0xb0, 0x00, 0x40, 0x00], &[]);
    good(&r);
    // Bytes 36-43 of the page: MAXIMUM WRITE SAME LENGTH, 65528 blocks.
    assert_eq!(&r.data[36..44], &[0, 0, 0, 0, 0, 0, 0xff, 0xf8]);
}

#[test]
fn write_same_unmap_with_a_pattern_up_to_the_limit_writes_the_pattern() {
    let f = big_fixture();
    good(&run(&f, &ws16(0x08, LIMIT_512), &[0xc3; 512]));
    let last = run(&f, &[0x28, 0, 0, 0, 0xff, 0xf7, 0, 0, 1, 0], &[]);
    assert_eq!(last.data, vec![0xc3; 512]);
}

#[test]
fn write_same_unmap_with_a_pattern_one_past_the_limit_is_invalid_field_in_cdb() {
    let f = big_fixture();
    let r = run(&f, &ws16(0x08, LIMIT_512 + 1), &[0xc3; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // Field pointer: SKSV, C/D, byte 10 (NUMBER OF LOGICAL BLOCKS).
    assert_eq!(&r.sense[15..18], &[0xc0, 0x00, 0x0a]);
    let first = run(&f, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    assert_eq!(first.data, vec![0u8; 512], "nothing may be written");
}

#[test]
fn write_same_unmap_of_zeros_one_past_the_limit_is_invalid_field_in_cdb() {
    let f = big_fixture();
    good(&run(&f, &ws16(0x08, LIMIT_512), &[0u8; 512]));
    let r = run(&f, &ws16(0x08, LIMIT_512 + 1), &[0u8; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn write_same_without_unmap_one_past_the_limit_is_invalid_field_in_cdb() {
    let f = big_fixture();
    let r = run(&f, &ws16(0x00, LIMIT_512 + 1), &[0x11; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    let r = run(&f, &ws16(0x01, LIMIT_512 + 1), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}
