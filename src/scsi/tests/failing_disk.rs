// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A disk that fails (`MemoryBackstore` faults): every command that touches
//! the medium answers with the sense SBC-4 gives the failure, leaves the
//! medium as it was where it must, and the next command is served.

use super::*;
use crate::backstore::{Fault, Op};

/// MEDIUM ERROR, the sense key of 4.15 (unrecovered read) and 4.16 (write).
const MEDIUM_ERROR: u8 = 0x3;

fn failing() -> (Fixture, Arc<MemoryBackstore>) {
    let f = fixture();
    let store = f.store.clone().expect("an image");
    // Consume the power-on unit attention.
    let _ = run(&f, &[0x00, 0, 0, 0, 0, 0], &[]);
    (f, store)
}

/// INFORMATION of a fixed-format sense, if VALID.
fn information(r: &Response) -> Option<u32> {
    (r.sense[0] & 0x80 != 0)
        .then(|| u32::from_be_bytes([r.sense[3], r.sense[4], r.sense[5], r.sense[6]]))
}

fn read10(lba: u8, blocks: u8) -> [u8; 10] {
    [0x28, 0, 0, 0, 0, lba, 0, 0, blocks, 0]
}

#[test]
fn a_read_across_a_bad_block_is_unrecovered_read_error_at_the_first_lba() {
    let (f, store) = failing();
    store.fail(Fault::new(Op::Read, 5 * 512..5 * 512 + 1, libc::EIO));
    let r = run(&f, &read10(4, 4), &[]);
    assert_eq!(sense_of(&r), (MEDIUM_ERROR, 0x11, 0x00));
    // The command's LBA (the daemon cannot tell which block of a transfer
    // the host's error came from).
    assert_eq!(information(&r), Some(4));
    good(&run(&f, &read10(0, 4), &[]));
}

#[test]
fn verify_of_a_bad_block_is_unrecovered_read_error() {
    let (f, store) = failing();
    store.fail(Fault::new(Op::Read, 0..u64::MAX, libc::EIO));
    // VERIFY(10), BYTCHK 0: a medium verification is a read.
    let r = run(&f, &[0x2f, 0, 0, 0, 0, 7, 0, 0, 1, 0], &[]);
    assert_eq!(sense_of(&r), (MEDIUM_ERROR, 0x11, 0x00));
    assert_eq!(information(&r), Some(7));
}

#[test]
fn compare_and_write_that_cannot_read_compares_nothing_and_writes_nothing() {
    let (f, store) = failing();
    store.fail(Fault::new(Op::Read, 0..u64::MAX, libc::EIO).times(1));
    // COMPARE AND WRITE of LBA 2, one block: verify zeros, write 0x5a.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[9] = 2;
    cdb[13] = 1;
    let mut data = vec![0u8; 512];
    data.extend_from_slice(&[0x5a; 512]);
    let r = run(&f, &cdb, &data);
    assert_eq!(sense_of(&r), (MEDIUM_ERROR, 0x11, 0x00));
    assert_eq!(run(&f, &read10(2, 1), &[]).data, vec![0u8; 512]);
    // Healed (the fault was spent): the same command writes.
    good(&run(&f, &cdb, &data));
    assert_eq!(run(&f, &read10(2, 1), &[]).data, vec![0x5a; 512]);
}

#[test]
fn write_same_on_a_failing_disk_is_write_error_at_its_lba() {
    let (f, store) = failing();
    store.fail(Fault::new(Op::Write, 0..u64::MAX, libc::EIO));
    // WRITE SAME(10) of 8 blocks at LBA 16.
    let r = run(&f, &[0x41, 0, 0, 0, 0, 16, 0, 0, 8, 0], &[0x77; 512]);
    assert_eq!(sense_of(&r), (MEDIUM_ERROR, 0x0c, 0x00));
    assert_eq!(information(&r), Some(16));
}

#[test]
fn unmap_that_the_disk_refuses_is_write_error() {
    let (f, store) = failing();
    store.fail(Fault::new(Op::Deallocate, 0..u64::MAX, libc::EIO));
    // UNMAP: one descriptor, LBA 8, 8 blocks.
    let mut params = vec![0, 22, 0, 16, 0, 0, 0, 0];
    params.extend_from_slice(&8u64.to_be_bytes());
    params.extend_from_slice(&8u32.to_be_bytes());
    params.extend_from_slice(&[0; 4]);
    let r = run(&f, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &params);
    assert_eq!(sense_of(&r), (MEDIUM_ERROR, 0x0c, 0x00));
    store.heal();
    good(&run(&f, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &params));
}

#[test]
fn a_write_that_finds_no_space_is_space_allocation_failed() {
    let (f, store) = failing();
    store.fail(Fault::new(Op::Write, 0..u64::MAX, libc::ENOSPC));
    let r = run(&f, &[0x2a, 0, 0, 0, 0, 3, 0, 0, 1, 0], &[1; 512]);
    // SBC-4 4.7.3.6: DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT.
    assert_eq!(sense_of(&r), (0x7, 0x27, 0x07));
}

#[test]
fn write_and_verify_whose_flush_fails_is_write_error() {
    let (f, store) = failing();
    store.fail(Fault::new(Op::Flush, 0..u64::MAX, libc::EIO));
    // WRITE AND VERIFY(10), BYTCHK 1, LBA 9, one block.
    let r = run(&f, &[0x2e, 0x02, 0, 0, 0, 9, 0, 0, 1, 0], &[3; 512]);
    assert_eq!(sense_of(&r), (MEDIUM_ERROR, 0x0c, 0x00));
    assert_eq!(information(&r), Some(9));
}

#[test]
fn an_extended_copy_from_a_failing_disk_is_a_third_party_device_failure() {
    let (f, store) = failing();
    good(&run(&f, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[9; 512]));
    store.fail(Fault::new(Op::Read, 0..u64::MAX, libc::EIO));
    // EXTENDED COPY (LID1): this LU as source and destination, one block
    // from LBA 0 to LBA 100.
    let list = xcopy::list(
        1,
        0b10,
        &[xcopy::cscd(&f.lu, 512)],
        &[xcopy::segment(0, 0, 1, 0, 100)],
    );
    let cdb = xcopy::xcopy_cdb(list.len() as u32);
    let r = run(&f, &cdb, &list);
    // SPC-5 6.6.5.2: COPY ABORTED, THIRD PARTY DEVICE FAILURE, segment 0.
    assert_eq!(sense_of(&r), (0xa, 0x0d, 0x01));
    store.heal();
    good(&run(&f, &cdb, &list));
    assert_eq!(run(&f, &read10(100, 1), &[]).data, vec![9; 512]);
}
