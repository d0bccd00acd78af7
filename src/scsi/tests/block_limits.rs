// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Block Limits VPD page (SBC-4 6.6.4) and the limits it announces.

use super::*;

/// INQUIRY, EVPD, page B0h, allocation length 64.
const INQUIRY_B0: [u8; 6] = [0x12, 0x01, 0xb0, 0x00, 0x40, 0x00];

/// Bytes 8-11 of the page: MAXIMUM TRANSFER LENGTH.
fn maximum_transfer_length(r: &Response) -> [u8; 4] {
    r.data[8..12].try_into().unwrap()
}

#[test]
fn maximum_transfer_length_fits_qemus_default_max_sectors_in_512_byte_blocks() {
    let f = fixture();
    let r = run(&f, &INQUIRY_B0, &[]);
    good(&r);
    // 65528 blocks of 512 bytes: 32 MiB - 4 KiB, under 0xFFFF sectors.
    assert_eq!(maximum_transfer_length(&r), [0x00, 0x00, 0xff, 0xf8]);
}

#[test]
fn maximum_transfer_length_in_4096_byte_blocks() {
    let f = fixture_with(64, 4096, false);
    let r = run(&f, &INQUIRY_B0, &[]);
    good(&r);
    // 8191 blocks of 4096 bytes.
    assert_eq!(maximum_transfer_length(&r), [0x00, 0x00, 0x1f, 0xff]);
}

/// READ(16) at LBA 0 of `blocks` blocks.
fn read16(blocks: u32) -> [u8; 16] {
    let [a, b, c, d] = blocks.to_be_bytes();
    [
        0x88, 0x00, // READ(16), no flags
        0, 0, 0, 0, 0, 0, 0, 0, // LOGICAL BLOCK ADDRESS 0
        a, b, c, d, // TRANSFER LENGTH
        0, 0, // GROUP NUMBER, CONTROL
    ]
}

#[test]
fn read_of_the_maximum_transfer_length_is_accepted_and_one_more_block_is_not() {
    let f = fixture_with(65536, 512, false);
    assert!(matches!(
        outcome(&f, &read16(65528), &[]),
        Outcome::Io(BlockIo { blocks: 65528, .. })
    ));
    let Outcome::Done(r) = outcome(&f, &read16(65529), &[]) else {
        panic!("a read past the maximum transfer length must not reach the backstore");
    };
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // Field pointer: SKSV, C/D, byte 10 (TRANSFER LENGTH).
    assert_eq!(&r.sense[15..18], &[0xc0, 0x00, 0x0a]);
}
