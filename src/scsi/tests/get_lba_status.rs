// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! GET LBA STATUS (SBC-4 5.20): the parameter data (table 52) and the LBA
//! status descriptors (table 53), whose first LBA is the starting LBA of
//! the CDB and each next one the previous LBA plus its block count
//! (5.20.2.3).

use super::*;

/// GET LBA STATUS from `lba`, allocation length `alloc`.
fn get_lba_status(lba: u64, alloc: u32) -> [u8; 16] {
    let l = lba.to_be_bytes();
    let a = alloc.to_be_bytes();
    [
        0x9e, 0x12, // SERVICE ACTION IN(16), GET LBA STATUS
        l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7], // STARTING LOGICAL BLOCK ADDRESS
        a[0], a[1], a[2], a[3], // ALLOCATION LENGTH
        0, 0, // reserved, CONTROL
    ]
}

/// Descriptor `i` as (LBA, NUMBER OF LOGICAL BLOCKS, PROVISIONING STATUS).
fn descriptor(r: &Response, i: usize) -> (u64, u32, u8) {
    let d = &r.data[8 + 16 * i..24 + 16 * i];
    (
        u64::from_be_bytes(d[0..8].try_into().unwrap()),
        u32::from_be_bytes(d[8..12].try_into().unwrap()),
        d[12] & 0x0f,
    )
}

const MAPPED: u8 = 0;
const DEALLOCATED: u8 = 1;

/// What libiscsi's GetLBAStatus.UnmapSingle sets up on a 512-byte LU with
/// 4 KiB physical blocks: blocks 0-263 written, then blocks 0-7 (one
/// physical block) unmapped.
fn mapped_after_one_unmapped_physical_block() -> Fixture {
    let f = fixture();
    good(&run(
        &f,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0x01, 0x08, 0], // WRITE(10), LBA 0, 264 blocks
        &[b'A'; 264 * 512],
    ));
    let param = [
        0x00, 0x16, 0x00, 0x10, 0, 0, 0,
        0, // UNMAP DATA LENGTH 22, BLOCK DESCRIPTOR DATA LENGTH 16
        0, 0, 0, 0, 0, 0, 0, 0, // LBA 0
        0, 0, 0, 8, 0, 0, 0, 0, // 8 blocks
    ];
    good(&run(&f, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &param));
    f
}

#[test]
fn first_descriptor_starts_at_the_requested_lba_inside_a_physical_block() {
    let f = mapped_after_one_unmapped_physical_block();
    let r = run(&f, &get_lba_status(9, 40), &[]);
    good(&r);
    // LBA 9 is the second logical block of the mapped physical block 8-15.
    assert_eq!(descriptor(&r, 0), (9, 255, MAPPED));
    assert_eq!(descriptor(&r, 1), (264, 2048 - 264, DEALLOCATED));
}

#[test]
fn first_descriptor_starts_at_the_requested_lba_inside_a_deallocated_extent() {
    let f = mapped_after_one_unmapped_physical_block();
    let r = run(&f, &get_lba_status(3, 40), &[]);
    good(&r);
    assert_eq!(descriptor(&r, 0), (3, 5, DEALLOCATED));
    // The next descriptor begins where the previous one ends.
    assert_eq!(descriptor(&r, 1), (8, 256, MAPPED));
}

#[test]
fn parameter_data_length_is_four_plus_sixteen_per_descriptor() {
    let f = mapped_after_one_unmapped_physical_block();
    let r = run(&f, &get_lba_status(0, 1024), &[]);
    good(&r);
    // Three extents: 0-7 deallocated, 8-263 mapped, 264-2047 deallocated.
    assert_eq!(&r.data[0..8], &[0, 0, 0, 52, 0, 0, 0, 0]);
    assert_eq!(r.data.len(), 8 + 3 * 16);
    assert_eq!(descriptor(&r, 2), (264, 1784, DEALLOCATED));
}

#[test]
fn allocation_length_of_one_descriptor_returns_one() {
    let f = mapped_after_one_unmapped_physical_block();
    let r = run(&f, &get_lba_status(0, 24), &[]);
    good(&r);
    assert_eq!(r.data.len(), 24);
    assert_eq!(descriptor(&r, 0), (0, 8, DEALLOCATED));
}

#[test]
fn last_lba_is_described_by_one_block() {
    let f = fixture();
    let r = run(&f, &get_lba_status(2047, 40), &[]);
    good(&r);
    assert_eq!(&r.data[0..4], &[0, 0, 0, 20]);
    assert_eq!(descriptor(&r, 0), (2047, 1, DEALLOCATED));
}

#[test]
fn starting_lba_at_the_capacity_is_lba_out_of_range() {
    let f = fixture();
    let r = run(&f, &get_lba_status(2048, 40), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}
