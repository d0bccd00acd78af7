// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Reading one descriptor chain of a split virtqueue (virtio 1.2, 2.7.5
//! "The Virtqueue Descriptor Table", 2.7.5.3 "Indirect Descriptors") from
//! guest memory, given its head: the device-readable and device-writable
//! buffers it describes. The head may come from the available ring or, after
//! a reconnection, from the inflight region (which is why the walk takes a
//! head and not the ring).
//!
//! Everything here is guest input: the table address, every descriptor and
//! every indirect table are bounds-checked; a chain is at most as long as the
//! queue (or its indirect table) so a loop ends; a chain longer than
//! `MAX_DESCRIPTORS` or whose device-readable descriptors follow
//! device-writable ones is refused.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

use vm_memory::{Bytes, GuestAddress};

use super::buffers::{ChainBuffers, GuestMemory, MAX_DESCRIPTORS};

/// virtq_desc flags (virtio 1.2, 2.7.5).
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

/// `le64 addr, le32 len, le16 flags, le16 next`.
const DESC_SIZE: u64 = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("Descriptor index {index} is outside the {size}-entry table")]
    IndexOutOfRange { index: u16, size: u32 },
    #[error("Descriptor table entry at {0:#x} is not in guest memory")]
    BadTable(u64),
    #[error("Descriptor chain is longer than its table (a loop)")]
    Loop,
    #[error("Indirect descriptor table of {0} bytes is not a whole number of descriptors")]
    BadIndirectLength(u32),
    #[error("Indirect descriptor also has NEXT set, or is inside an indirect table")]
    BadIndirect,
    #[error(transparent)]
    Buffers(#[from] super::buffers::Error),
}

/// One descriptor as read from a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestMemory, table: u64, index: u16) -> Result<Desc, Error> {
    let at = u64::from(index)
        .checked_mul(DESC_SIZE)
        .and_then(|o| table.checked_add(o))
        .ok_or(Error::BadTable(table))?;
    let mut raw = [0u8; DESC_SIZE as usize];
    mem.read_slice(&mut raw, GuestAddress(at))
        .map_err(|_| Error::BadTable(at))?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
    Ok(Desc {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        flags: u16::from_le_bytes([f0, f1]),
        next: u16::from_le_bytes([n0, n1]),
    })
}

/// Read the chain starting at `head` in the descriptor table at
/// `desc_table` (a queue of `queue_size` entries).
pub fn read_chain(
    mem: &GuestMemory,
    desc_table: u64,
    queue_size: u16,
    head: u16,
) -> Result<ChainBuffers, Error> {
    let mut bufs = ChainBuffers::default();
    let mut count = 0usize;
    let mut index = head;
    // At most one pass over the table: more is a loop.
    for _ in 0..queue_size {
        if index >= queue_size {
            return Err(Error::IndexOutOfRange {
                index,
                size: u32::from(queue_size),
            });
        }
        let d = read_desc(mem, desc_table, index)?;
        if d.flags & DESC_F_INDIRECT != 0 {
            if d.flags & DESC_F_NEXT != 0 {
                return Err(Error::BadIndirect);
            }
            read_indirect(mem, &d, &mut bufs, &mut count)?;
            return Ok(bufs);
        }
        push(&mut bufs, &mut count, &d)?;
        if d.flags & DESC_F_NEXT == 0 {
            return Ok(bufs);
        }
        index = d.next;
    }
    Err(Error::Loop)
}

/// The descriptors of an indirect table (virtio 1.2, 2.7.5.3.1: the table
/// holds `len / 16` descriptors, none of them indirect, chained by `next`
/// from entry 0).
fn read_indirect(
    mem: &GuestMemory,
    d: &Desc,
    bufs: &mut ChainBuffers,
    count: &mut usize,
) -> Result<(), Error> {
    if d.len == 0 || u64::from(d.len) % DESC_SIZE != 0 {
        return Err(Error::BadIndirectLength(d.len));
    }
    let entries = u64::from(d.len) / DESC_SIZE;
    // More entries than the table can index are never reached.
    let entries = u16::try_from(entries).unwrap_or(u16::MAX);
    let mut index = 0u16;
    for _ in 0..entries {
        if index >= entries {
            return Err(Error::IndexOutOfRange {
                index,
                size: u32::from(entries),
            });
        }
        let e = read_desc(mem, d.addr, index)?;
        if e.flags & DESC_F_INDIRECT != 0 {
            return Err(Error::BadIndirect);
        }
        push(bufs, count, &e)?;
        if e.flags & DESC_F_NEXT == 0 {
            return Ok(());
        }
        index = e.next;
    }
    Err(Error::Loop)
}

fn push(bufs: &mut ChainBuffers, count: &mut usize, d: &Desc) -> Result<(), Error> {
    *count += 1;
    if *count > MAX_DESCRIPTORS {
        return Err(super::buffers::Error::TooManyDescriptors.into());
    }
    bufs.push(d.addr, d.len, d.flags & DESC_F_WRITE != 0)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const TABLE: u64 = 0x1000;
    const INDIRECT: u64 = 0x3000;

    fn mem() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(m: &GuestMemory, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        m.write_slice(&raw, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }

    #[test]
    fn a_direct_chain_splits_into_readable_then_writable() {
        let m = mem();
        put(&m, TABLE, 2, 0x8000, 51, DESC_F_NEXT, 5);
        put(&m, TABLE, 5, 0x9000, 108, DESC_F_WRITE | DESC_F_NEXT, 7);
        put(&m, TABLE, 7, 0xa000, 512, DESC_F_WRITE, 0);
        let b = read_chain(&m, TABLE, 8, 2).unwrap();
        assert_eq!(b.readable.len(), 51);
        assert_eq!(b.writable.len(), 620);
    }

    #[test]
    fn a_loop_ends_after_one_pass_over_the_table() {
        let m = mem();
        put(&m, TABLE, 0, 0x8000, 1, DESC_F_NEXT, 1);
        put(&m, TABLE, 1, 0x8000, 1, DESC_F_NEXT, 0);
        assert_eq!(read_chain(&m, TABLE, 8, 0).err(), Some(Error::Loop));
    }

    #[test]
    fn next_and_head_must_index_the_table() {
        let m = mem();
        put(&m, TABLE, 0, 0x8000, 1, DESC_F_NEXT, 8);
        assert_eq!(
            read_chain(&m, TABLE, 8, 0).err(),
            Some(Error::IndexOutOfRange { index: 8, size: 8 })
        );
        assert!(matches!(
            read_chain(&m, TABLE, 8, 9),
            Err(Error::IndexOutOfRange { .. })
        ));
    }

    #[test]
    fn a_table_outside_guest_memory_is_refused() {
        let m = mem();
        assert!(matches!(
            read_chain(&m, 0xfff8, 8, 0),
            Err(Error::BadTable(_))
        ));
        assert!(matches!(
            read_chain(&m, u64::MAX - 8, 8, 1),
            Err(Error::BadTable(_))
        ));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let m = mem();
        put(&m, TABLE, 0, 0x8000, 8, DESC_F_WRITE | DESC_F_NEXT, 1);
        put(&m, TABLE, 1, 0x9000, 8, 0, 0);
        assert!(matches!(
            read_chain(&m, TABLE, 8, 0),
            Err(Error::Buffers(
                crate::virtio::buffers::Error::ReadableAfterWritable
            ))
        ));
    }

    #[test]
    fn an_indirect_table_is_followed_from_its_first_entry() {
        let m = mem();
        put(&m, TABLE, 3, INDIRECT, 48, DESC_F_INDIRECT, 0);
        put(&m, INDIRECT, 0, 0x8000, 51, DESC_F_NEXT, 2);
        put(&m, INDIRECT, 2, 0x9000, 108, DESC_F_WRITE | DESC_F_NEXT, 1);
        put(&m, INDIRECT, 1, 0xa000, 4096, DESC_F_WRITE, 0);
        let b = read_chain(&m, TABLE, 8, 3).unwrap();
        assert_eq!((b.readable.len(), b.writable.len()), (51, 4204));
    }

    #[test]
    fn indirect_rules_are_enforced() {
        let m = mem();
        // Indirect with NEXT.
        put(&m, TABLE, 0, INDIRECT, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1);
        assert_eq!(read_chain(&m, TABLE, 8, 0).err(), Some(Error::BadIndirect));
        // Indirect inside indirect.
        put(&m, TABLE, 0, INDIRECT, 16, DESC_F_INDIRECT, 0);
        put(&m, INDIRECT, 0, INDIRECT, 16, DESC_F_INDIRECT, 0);
        assert_eq!(read_chain(&m, TABLE, 8, 0).err(), Some(Error::BadIndirect));
        // Length not a multiple of 16, or zero.
        put(&m, TABLE, 0, INDIRECT, 20, DESC_F_INDIRECT, 0);
        assert_eq!(
            read_chain(&m, TABLE, 8, 0).err(),
            Some(Error::BadIndirectLength(20))
        );
        put(&m, TABLE, 0, INDIRECT, 0, DESC_F_INDIRECT, 0);
        assert_eq!(
            read_chain(&m, TABLE, 8, 0).err(),
            Some(Error::BadIndirectLength(0))
        );
        // A loop inside the indirect table.
        put(&m, TABLE, 0, INDIRECT, 32, DESC_F_INDIRECT, 0);
        put(&m, INDIRECT, 0, 0x8000, 1, DESC_F_NEXT, 1);
        put(&m, INDIRECT, 1, 0x8000, 1, DESC_F_NEXT, 0);
        assert_eq!(read_chain(&m, TABLE, 8, 0).err(), Some(Error::Loop));
    }

    #[test]
    fn zero_length_descriptors_add_nothing() {
        let m = mem();
        put(&m, TABLE, 0, 0x8000, 0, DESC_F_NEXT, 1);
        put(&m, TABLE, 1, 0x9000, 0, DESC_F_WRITE, 0);
        let b = read_chain(&m, TABLE, 8, 0).unwrap();
        assert!(b.readable.is_empty() && b.writable.is_empty());
    }
}
