// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the device server accepts and advertises (the Block Limits VPD
//! page, SBC-4 6.6.4): one definition each, read by the page and by the
//! commands that enforce them.

/// Largest transfer we advertise (VPD B0h MAXIMUM TRANSFER LENGTH) and
/// accept, in bytes: what QEMU's virtio-scsi front end carries with its
/// default `max_sectors` (0xFFFF 512-byte sectors, 32 MiB - 512; a Linux
/// guest shows max_hw_sectors_kb 32767), rounded down to 4 KiB so that it
/// is a whole number of blocks of either logical block size and of the
/// 4 KiB physical block: 32 MiB - 4 KiB. Bounded also so that one command
/// cannot pin an unbounded amount of guest memory.
pub const MAX_TRANSFER_BYTES: u64 = (0xffff * 512) & !4095;
/// Largest COMPARE AND WRITE, in blocks (SBC-3 6.3: a one-byte field).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 128;
/// UNMAP limits (VPD B0h): descriptors per command and blocks per command.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
pub const MAX_UNMAP_BLOCKS: u32 = 0xffff_ffff;
/// Largest WRITE SAME, in bytes, with or without UNMAP: no more than one
/// WRITE may carry. It runs synchronously on a queue worker while holding
/// its block range, and with a non-zero pattern it writes every byte.
pub const MAX_WRITE_SAME_BYTES: u64 = MAX_TRANSFER_BYTES;

/// MAXIMUM WRITE SAME LENGTH (VPD B0h) in blocks: what the page says and
/// what WRITE SAME enforces.
pub(crate) fn max_write_same_blocks(block_size: u32) -> u64 {
    MAX_WRITE_SAME_BYTES / u64::from(block_size)
}
