// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Requests as a guest lays them out: a descriptor table and indirect
//! tables built in guest memory from the input (direct and indirect
//! descriptors, loops, overlaps, addresses outside memory or across its
//! hole, zero lengths, any queue size and head), each chain walked as the
//! device walks it (`virtio::chain`), and its request parsed with the
//! virtio layer alone.

use arbitrary::{Arbitrary, Result, Unstructured};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::buffers::{Buffer, ChainBuffers, Error, GuestMemory};
use crate::virtio::chain::{self, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtio::{
    CmdReq, CmdResp, CtrlAnResp, CtrlTmfReq, CtrlTmfResp, Response, VirtioLun, REQ_HEADER_LEN,
    RESP_HEADER_LEN,
};
use std::collections::BTreeMap;
use std::mem::size_of;
use std::sync::Arc;
use vm_memory::ByteValued;

use crate::backstore::NullBackstore;
use crate::device::{Controller, ScsiBackend};
use crate::scsi::{Identity, LogicalUnit, LuConfig, Nexus, Target};
use crate::vhost::Rings;

/// Guest memory: two 64 KiB regions with a 64 KiB hole between them.
const REGION: u64 = 0x1_0000;
const SECOND: u64 = 0x2_0000;
/// The descriptor table (room for 512 entries).
const DESC_TABLE: u64 = 0x0;
/// Indirect descriptor tables.
const INDIRECT: u64 = 0x2000;
/// The rest of the first region holds buffers.
const DATA: u64 = 0x4000;
/// Chains walked per input.
const MAX_CHAINS: usize = 64;

/// A guest address: mostly in the buffer area, sometimes where indirect
/// tables are, in the second region, just before the hole, or anywhere.
fn address(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=7)? {
        0..=2 => u.int_in_range(DATA..=REGION - 1)?,
        3 => u.int_in_range(INDIRECT..=DATA - 1)?,
        4 => u.int_in_range(SECOND..=SECOND + REGION - 1)?,
        5 => REGION - u64::from(u.int_in_range(0u8..=64)?),
        _ => u.arbitrary()?,
    })
}

fn length(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(match u.int_in_range(0..=6)? {
        0 => 0,
        1 => u.int_in_range(1..=64)?,
        2 => u.int_in_range(REQ_HEADER_LEN as u32..=REQ_HEADER_LEN as u32 + 64)?,
        3 => u.int_in_range(RESP_HEADER_LEN as u32..=RESP_HEADER_LEN as u32 + 512)?,
        // An indirect table of 1 to 32 entries.
        4 => 16 * u.int_in_range(1..=32)?,
        5 => u.int_in_range(1..=0x1_0000)?,
        _ => u.arbitrary()?,
    })
}

/// One descriptor (virtio 2.7.5: le64 addr, le32 len, le16 flags, le16
/// next) at `at`.
fn descriptor(u: &mut Unstructured<'_>, mem: &GuestMemory, at: u64, size: u16) -> Result<()> {
    let addr = address(u)?;
    let len = length(u)?;
    let flags = if u.ratio(1, 16)? {
        u.arbitrary()?
    } else {
        u.int_in_range(0..=7)? & (DESC_F_NEXT | DESC_F_WRITE | DESC_F_INDIRECT)
    };
    let next = if u.ratio(7, 8)? {
        u.int_in_range(0..=size.saturating_sub(1))?
    } else {
        u.arbitrary()?
    };
    let mut raw = [0u8; 16];
    for (d, s) in raw.iter_mut().zip(
        addr.to_le_bytes()
            .into_iter()
            .chain(len.to_le_bytes())
            .chain(flags.to_le_bytes())
            .chain(next.to_le_bytes()),
    ) {
        *d = s;
    }
    let _ = mem.write_slice(&raw, GuestAddress(at));
    Ok(())
}

/// A guest's descriptors, indirect tables and buffer contents, all from
/// the input; then chains from arbitrary heads are walked, and each one's
/// request header and LUN parsed, its response written, and its buffers
/// read and written at arbitrary offsets.
pub fn virtio_request(data: &[u8]) {
    let _ = requests(&mut Unstructured::new(data));
}

fn requests(u: &mut Unstructured<'_>) -> Result<()> {
    chains(u, request)
}

/// Guest memory, a descriptor table and indirect tables, buffer contents,
/// all from the input; then `each` for chains from arbitrary heads, as the
/// device walks them.
fn chains(
    u: &mut Unstructured<'_>,
    mut each: impl FnMut(&mut Unstructured<'_>, &GuestMemory, &ChainBuffers) -> Result<()>,
) -> Result<()> {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), REGION as usize),
        (GuestAddress(SECOND), REGION as usize),
    ]) else {
        return Ok(());
    };
    // Mostly a power of two up to 256, as queues are; sometimes anything.
    let size: u16 = if u.ratio(7, 8)? {
        1 << u.int_in_range(0..=8)?
    } else {
        u.arbitrary()?
    };
    for i in 0..u64::from(size.min(512)) {
        descriptor(u, &mem, DESC_TABLE + 16 * i, size)?;
    }
    for i in 0..u64::from(u.int_in_range(0u8..=32)?) {
        descriptor(u, &mem, INDIRECT + 16 * i, size)?;
    }
    // Buffer contents: request headers (LUN, tag, CDB) and data.
    for _ in 0..u.int_in_range(0..=8)? {
        let at = address(u)?;
        let bytes: Vec<u8> = Vec::arbitrary(u)?;
        let _ = mem.write_slice(&bytes, GuestAddress(at));
    }
    // A table at the start of memory, or anywhere (the front-end says where).
    let table = if u.ratio(15, 16)? {
        DESC_TABLE
    } else {
        u.arbitrary()?
    };
    for _ in 0..MAX_CHAINS {
        if u.is_empty() {
            break;
        }
        let head: u16 = if u.ratio(15, 16)? {
            u.int_in_range(0..=size.saturating_sub(1))?
        } else {
            u.arbitrary()?
        };
        if let Ok(bufs) = chain::read_chain(&mem, table, size, head) {
            each(u, &mem, &bufs)?;
        }
    }
    Ok(())
}

thread_local! {
    /// A device with a null LU at LUN 0 and a passed-through LUN 5 (to no
    /// session), built once: its queue workers are set up at creation.
    static CONTROL: Option<ScsiBackend> = control_device();
}

fn control_device() -> Option<ScsiBackend> {
    let lu = Arc::new(LogicalUnit::new(
        Arc::new(NullBackstore::new(1 << 20)),
        LuConfig {
            block_size: 512,
            identity: Identity::derive("/fuzz/control"),
            pr_file: None,
            pr_state: Default::default(),
            reservations: true,
        },
    ));
    let controller = Arc::new(Controller {
        name: "fuzz".into(),
        target: Target::with_remote(BTreeMap::from([(0, lu)]), vec![5]),
        nexus: Nexus {
            id: 1,
            path: 1,
            relative_port: 1,
            initiator: "iqn.2026-12.fuzz:control".into(),
        },
        request_queues: 1,
        coalesce: Default::default(),
        remote: Default::default(),
        problems: Controller::problem_limit(),
        connected: Default::default(),
    });
    let rings = Rings::new(3, 256).ok()?;
    ScsiBackend::new(controller, rings).ok()
}

/// Control-queue requests (virtio 5.6.6.2) in chains built as
/// `virtio_request` builds them, each readable part holding mostly a
/// well-formed task management or asynchronous notification request (any
/// subtype, LUN address and tag): the device answers within the writable
/// part, with a response code the spec defines, and always answers a
/// complete TMF request that has room for its answer.
pub fn virtio_control(data: &[u8]) {
    CONTROL.with(|device| {
        if let Some(d) = device {
            let _ = chains(&mut Unstructured::new(data), |u, mem, bufs| {
                control(u, d, mem, bufs)
            });
        }
    });
}

fn control(
    u: &mut Unstructured<'_>,
    device: &ScsiBackend,
    mem: &GuestMemory,
    bufs: &ChainBuffers,
) -> Result<()> {
    let ty: u32 = match u.int_in_range(0..=7)? {
        0..=3 => 0,
        4 => 1,
        5 => 2,
        _ => u.arbitrary()?,
    };
    let lun: [u8; 8] = match u.int_in_range(0..=5)? {
        0 | 1 => [1, 0, 0x40, 0, 0, 0, 0, 0],
        2 => [1, 0, 0x40, 5, 0, 0, 0, 0],
        3 => [
            1,
            0,
            0x40 | u.int_in_range(0..=0x3f)?,
            u.arbitrary()?,
            0,
            0,
            0,
            0,
        ],
        4 => [0xc1, 0x01, 0, 0, 0, 0, 0, 0],
        _ => u.arbitrary()?,
    };
    let subtype: u32 = if u.ratio(7, 8)? {
        u.int_in_range(0..=7)?
    } else {
        u.arbitrary()?
    };
    let tag: u64 = u.arbitrary()?;
    if u.ratio(7, 8)? {
        let mut req = Vec::with_capacity(24);
        req.extend_from_slice(&ty.to_le_bytes());
        if ty == 0 {
            req.extend_from_slice(&subtype.to_le_bytes());
            req.extend_from_slice(&lun);
            req.extend_from_slice(&tag.to_le_bytes());
        } else {
            req.extend_from_slice(&lun);
            req.extend_from_slice(&u.arbitrary::<u32>()?.to_le_bytes());
        }
        let n = req
            .len()
            .min(usize::try_from(bufs.readable.len()).unwrap_or(0));
        let _ = bufs
            .readable
            .write_at(mem, 0, req.get(..n).unwrap_or_default());
    }
    let _ = bufs.writable.fill_zero(mem, 0, bufs.writable.len().min(8));
    let mut seen = [0u8; 4];
    let ty = match bufs.readable.read_at(mem, 0, &mut seen) {
        Ok(()) => Some(u32::from_le_bytes(seen)),
        Err(_) => None,
    };
    let used = device.control_request(mem, bufs);
    assert!(u64::from(used) <= bufs.writable.len());
    // Buffers are checked against guest memory when used, not when the
    // chain is walked: "complete" means the device can read and write them.
    let mut whole = CtrlTmfReq::default();
    let complete_tmf = ty == Some(0)
        && bufs.readable.read_at(mem, 0, whole.as_mut_slice()).is_ok()
        && bufs.writable.fill_zero(mem, 0, 1).is_ok();
    if complete_tmf {
        assert_eq!(used as usize, size_of::<CtrlTmfResp>());
    }
    if used > 0 {
        let mut resp = [0u8; 5];
        let k = (used as usize).min(resp.len());
        assert!(bufs.writable.read_at(mem, 0, &mut resp[..k]).is_ok());
        match ty {
            Some(0) => assert!(Response::try_from(resp[0]).is_ok(), "{resp:?}"),
            Some(1 | 2) => {
                assert_eq!(used as usize, size_of::<CtrlAnResp>());
                // No events are offered; the answer is OK.
                assert_eq!(resp, [0, 0, 0, 0, Response::Ok as u8]);
            }
            _ => panic!("an unknown request type was answered"),
        }
    }
    Ok(())
}

/// What the device does with a chain's buffers, and accesses at
/// arbitrary offsets.
fn request(u: &mut Unstructured<'_>, mem: &GuestMemory, bufs: &ChainBuffers) -> Result<()> {
    let mut req = CmdReq::default();
    if bufs.readable.read_at(mem, 0, req.as_mut_slice()).is_ok() {
        let _ = (VirtioLun::parse(&req.lun), req.tag());
    }
    if bufs.writable.len() >= RESP_HEADER_LEN as u64 {
        let sense: Vec<u8> = Vec::arbitrary(u)?;
        let hdr = CmdResp::new(Response::Ok, u.arbitrary()?, &sense, u.arbitrary()?);
        let _ = bufs.writable.write_at(mem, 0, hdr.as_slice());
    }
    for _ in 0..u.int_in_range(0..=4)? {
        let b = if u.arbitrary()? {
            &bufs.readable
        } else {
            &bufs.writable
        };
        access(u, mem, b)?;
    }
    Ok(())
}

/// One read, write, zero fill or iovec export at an arbitrary offset:
/// refused as out of bounds exactly when it goes past the buffer, and an
/// export covers exactly what was asked.
fn access(u: &mut Unstructured<'_>, mem: &GuestMemory, b: &Buffer) -> Result<()> {
    let offset = if u.ratio(3, 4)? {
        u.int_in_range(0..=b.len().saturating_add(16))?
    } else {
        u.arbitrary()?
    };
    let len = u.int_in_range(0..=0x2_0000u64)?;
    let past = offset.checked_add(len).is_none_or(|end| end > b.len());
    let refused = |r: &std::result::Result<(), Error>| matches!(r, Err(Error::OutOfBounds { .. }));
    let n = usize::try_from(len).unwrap_or(0);
    match u.int_in_range(0..=3)? {
        0 => {
            let mut buf = vec![0u8; n];
            assert_eq!(refused(&b.read_at(mem, offset, &mut buf)), past);
        }
        1 => {
            let buf = vec![0xa5u8; n];
            assert_eq!(refused(&b.write_at(mem, offset, &buf)), past);
        }
        2 => assert_eq!(refused(&b.fill_zero(mem, offset, len)), past),
        _ => match b.iovecs(mem, offset, len) {
            Ok(v) => {
                assert!(!past);
                assert_eq!(v.iter().map(|i| i.iov_len as u64).sum::<u64>(), len);
            }
            Err(e) => assert_eq!(matches!(e, Error::OutOfBounds { .. }), past),
        },
    }
    Ok(())
}
