// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SCSI commands from guests (through `Target`, as the device runs them),
//! PR OUT parameter lists, and qemu-pr-helper requests.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use arbitrary::{Arbitrary, Result, Unstructured};

use crate::backstore::{Fault, FileBackstore, MemoryBackstore, NullBackstore, Op};
use crate::prhelper::codec::{self as helper, Direction, Reply};
use crate::scsi::pr::codec as pr;
use crate::scsi::{
    AbortHook, Command, Identity, IoKind, LogicalUnit, LuConfig, LunAddress, Nexus, Outcome, Target,
};

/// Byte 0: the service action; the rest: a parameter list, then the same
/// bytes as TransportIDs back to back.
pub fn pr_out_params(data: &[u8]) {
    let Some((&sa, p)) = data.split_first() else {
        return;
    };
    if let Ok(action) = pr::ProutAction::try_from(sa) {
        assert_eq!(action as u8, sa);
    }
    // Bits 2-0 name every service action there is.
    if let Ok(action) = pr::ProutAction::try_from(sa & 0x07) {
        let _ = pr::parse_prout(action, p);
        let _ = pr::parse_prout_header(action, p);
    }
    let _ = pr::scope_type(sa);
    let mut rest = p;
    while let Ok((name, used)) = pr::parse_transport_id(rest) {
        assert!(used >= 4 && used <= rest.len());
        // A name read encodes and reads back to itself.
        let again = pr::encode_transport_id(&name);
        assert_eq!(pr::parse_transport_id(&again), Ok((name, again.len())));
        rest = rest.get(used..).unwrap_or_default();
    }
}

/// A client's requested features, then requests: a 16-byte CDB, the number
/// of fds that came with it, and what executing it gave.
pub fn prhelper_codec(data: &[u8]) {
    let _ = prhelper(&mut Unstructured::new(data));
}

fn prhelper(u: &mut Unstructured<'_>) -> Result<()> {
    let _ = helper::check_features(u.arbitrary()?);
    while !u.is_empty() {
        let cdb: [u8; helper::CDB_LEN] = u.arbitrary()?;
        let Ok(dir) = helper::check_request(&cdb, u.int_in_range(0..=3)?) else {
            continue;
        };
        let reply = Reply {
            status: u.arbitrary()?,
            sense: Vec::arbitrary(u)?,
            data: Vec::arbitrary(u)?,
        };
        check_reply_to_qemu(dir, &reply);
    }
    Ok(())
}

/// The reply `reply` to a request `dir`, as the pr-helper sends it, holds
/// what QEMU asserts: a payload only for PR IN with GOOD status, never over
/// the allocation length, and as long as its header says.
fn check_reply_to_qemu(dir: Direction, reply: &Reply) {
    let wire = helper::encode_reply(dir, reply);
    let sz = wire
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(u32::MAX) as usize;
    match dir {
        Direction::In { len } if reply.status == 0 => assert!(sz <= len),
        _ => assert_eq!(sz, 0),
    }
    assert_eq!(wire.len(), helper::RESPONSE_HEADER_LEN + sz);
}

/// Blocks of the file LU (512 or 4096 bytes each) and of the null LU.
const FILE_BLOCKS: u64 = 64;
const NULL_SIZE: u64 = 1 << 20;

/// Where the file LU and its APTPL state live while an input runs (in
/// /dev/shm when it exists): named after the process, the image unlinked
/// once open, the state removed after each input.
fn scratch(name: &str) -> PathBuf {
    let base = std::path::Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!(
        "vhost-user-scsi-fuzz-{}.{name}",
        std::process::id()
    ))
}

/// A file LU on a zeroed file and a null LU, fresh for each input.
fn units(block_size: u32) -> Option<(Arc<LogicalUnit>, Arc<LogicalUnit>)> {
    let path = scratch("img");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .ok()?;
    f.set_len(FILE_BLOCKS * u64::from(block_size)).ok()?;
    let store = FileBackstore::open(&path, false, false);
    let _ = std::fs::remove_file(&path);
    let file = LogicalUnit::new(
        Arc::new(store.ok()?),
        LuConfig {
            block_size,
            identity: Identity::derive("/fuzz/disk.img"),
            pr_file: Some(scratch("pr")),
            pr_state: Default::default(),
            reservations: true,
        },
    );
    let null = LogicalUnit::new(
        Arc::new(NullBackstore::new(NULL_SIZE)),
        LuConfig {
            block_size: 512,
            identity: Identity::derive("null:fuzz"),
            pr_file: None,
            pr_state: Default::default(),
            reservations: true,
        },
    );
    Some((Arc::new(file), Arc::new(null)))
}

/// A thin LU on an image in memory that the input makes fail (LUN 2).
fn failing_unit(block_size: u32) -> (Arc<LogicalUnit>, Arc<MemoryBackstore>) {
    let image = Arc::new(MemoryBackstore::new(FILE_BLOCKS * u64::from(block_size)));
    let lu = LogicalUnit::new(
        image.clone(),
        LuConfig {
            block_size,
            identity: Identity::derive("memory:fuzz"),
            pr_file: None,
            pr_state: Default::default(),
            reservations: true,
        },
    );
    (Arc::new(lu), image)
}

/// A fault on the image: any operation, over a range of blocks near the
/// start (where the commands go), failing with EIO or ENOSPC, for a few
/// operations or until healed.
fn fault(u: &mut Unstructured<'_>, block_size: u32) -> Result<Fault> {
    let op = *u.choose(&[Op::Read, Op::Write, Op::Flush, Op::Deallocate])?;
    let bs = u64::from(block_size);
    let start = u.int_in_range(0..=FILE_BLOCKS)? * bs;
    let len = u.int_in_range(1..=64)? * bs;
    let errno = if u.arbitrary()? {
        libc::EIO
    } else {
        libc::ENOSPC
    };
    let f = Fault::new(op, start..start + len, errno);
    Ok(if u.arbitrary()? {
        f.times(u.int_in_range(1..=3)?)
    } else {
        f
    })
}

/// Three I_T nexuses (two initiators, one of them on two target ports),
/// the first reached by two paths (controllers), as during a migration.
fn nexuses() -> [Nexus; 4] {
    let n = |id, path, relative_port, initiator: &str| Nexus {
        id,
        path,
        relative_port,
        initiator: initiator.into(),
    };
    [
        n(1, 1, 1, "iqn.2026-12.fuzz:a"),
        n(2, 2, 1, "iqn.2026-12.fuzz:b"),
        n(3, 3, 2, "iqn.2026-12.fuzz:a"),
        n(1, 4, 1, "iqn.2026-12.fuzz:a"),
    ]
}

/// Opcodes worth reaching often (the rest come from any byte).
const OPCODES: &[u8] = &[
    0x00, 0x03, 0x12, 0x15, 0x1a, 0x1b, 0x25, 0x28, 0x2a, 0x2e, 0x2f, 0x35, 0x41, 0x42, 0x55, 0x5a,
    0x5e, 0x5f, 0x88, 0x89, 0x8a, 0x8e, 0x8f, 0x91, 0x93, 0x9e, 0xa0, 0xa3,
];

/// Commands on a file LU (LUN 0), a null LU (LUN 1) and a thin LU on an
/// image in memory that fails as the input says (LUN 2: any operation on
/// a range of blocks, EIO or ENOSPC, for a few operations or until healed)
/// from three nexuses (four paths):
/// any CDB (mostly with a known opcode), any data-out, any allocation
/// length, at any LUN address; block I/O is done, or completed with an
/// error, as the transport would. Resets and unit attentions in between.
pub fn scsi_execute(data: &[u8]) {
    let _ = execute(&mut Unstructured::new(data));
    let _ = std::fs::remove_file(scratch("pr"));
}

fn execute(u: &mut Unstructured<'_>) -> Result<()> {
    let block_size = if u.arbitrary::<bool>()? { 4096 } else { 512 };
    let Some((file, null)) = units(block_size) else {
        return Ok(());
    };
    let (failing, image) = failing_unit(block_size);
    let target = Target::new(BTreeMap::from([
        (0, file.clone()),
        (1, null.clone()),
        (2, failing.clone()),
    ]));
    let nexuses = nexuses();
    for n in &nexuses {
        // PREEMPT AND ABORT reaches the nexuses it preempts through these.
        let hook: AbortHook = Arc::new(|| {});
        target.attach(n, |_| Some(hook.clone()));
    }
    while !u.is_empty() {
        let n = u.choose(&nexuses)?;
        let addr = match u.int_in_range(0..=15)? {
            0 => LunAddress::Lun(u.arbitrary()?),
            1 => LunAddress::ReportLunsWellKnown,
            2 => LunAddress::Unsupported,
            3 => LunAddress::from_first_level(u.arbitrary()?, u.arbitrary()?),
            4..=8 => LunAddress::Lun(0),
            9..=11 => LunAddress::Lun(1),
            _ => LunAddress::Lun(2),
        };
        let mut cdb: Vec<u8> = Vec::arbitrary(u)?;
        cdb.truncate(40);
        if let Some(op) = cdb.first_mut() {
            if u.ratio(3, 4)? {
                *op = *u.choose(OPCODES)?;
            }
        }
        let data_out: Vec<u8> = Vec::arbitrary(u)?;
        let data_in_len = match u.int_in_range(0..=3)? {
            0 => u.int_in_range(0..=4096)?,
            1 => u.int_in_range(0..=(1 << 20))?,
            2 => usize::try_from(u.arbitrary::<u32>()?).unwrap_or(usize::MAX),
            _ => 0,
        };
        let mut dout: &[u8] = &data_out;
        let outcome = target.execute(
            addr,
            Command {
                cdb: &cdb,
                nexus: n,
                data_out: &mut dout,
                data_in_len,
            },
        );
        match outcome {
            Outcome::Done(r) => assert!(r.sense.len() <= 252),
            Outcome::Remote(l) => panic!("no passthrough LUN here, yet {l}"),
            Outcome::Io(io) => {
                let lu = match addr {
                    LunAddress::Lun(1) => &null,
                    LunAddress::Lun(2) => &failing,
                    _ => &file,
                };
                let capacity = lu.blocks() * u64::from(lu.block_size());
                assert!(io.offset.checked_add(io.len).is_some_and(|e| e <= capacity));
                assert_eq!(io.len, io.blocks * u64::from(lu.block_size()));
                let result = match u.int_in_range(0..=3)? {
                    0 => Err(io::Error::from_raw_os_error(libc::EIO)),
                    1 => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
                    _ => {
                        let mut buf = vec![0u8; usize::try_from(io.len).unwrap_or(0)];
                        if io.kind == IoKind::Write {
                            let k = buf.len().min(data_out.len());
                            buf.get_mut(..k)
                                .unwrap_or_default()
                                .copy_from_slice(data_out.get(..k).unwrap_or_default());
                        }
                        lu.run_io_sync(&io, &mut buf)
                    }
                };
                let r = lu.complete_io(&io, result);
                assert!(r.sense.len() <= 252);
            }
        }
        match u.int_in_range(0..=31)? {
            0 => file.lun_reset(),
            1 => file.nexus_reset(n),
            2 => {
                let _ = file.take_ua(n.id);
            }
            3..=5 => image.fail(fault(u, block_size)?),
            6 => image.heal(),
            7 => failing.lun_reset(),
            _ => {}
        }
    }
    for n in &nexuses {
        target.detach(n);
    }
    Ok(())
}

/// The APTPL state file (`scsi::pr::persist`): any text to the decoder.
/// With the first byte odd the harness appends the right checksum line, so
/// that inputs reach the records instead of stopping at the checksum.
/// A state it accepts has each I_T nexus registered once and its
/// reservation holder registered, and is written back as it was read.
pub fn aptpl_state(data: &[u8]) {
    use crate::scsi::pr::persist;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(body) = std::str::from_utf8(rest) else {
        return;
    };
    let text = if mode & 1 == 1 {
        let sum = crate::scsi::fnv::fnv1a64(body.as_bytes());
        format!("{body}checksum {sum:016x}\n")
    } else {
        body.to_string()
    };
    const NAA: u64 = 0x3123_4567_89ab_cdef;
    let path = std::path::Path::new("/fuzz/lu.pr");
    let Ok(st) = persist::decode(&text, NAA, path) else {
        return;
    };
    for (i, r) in st.registrations.iter().enumerate() {
        assert!(
            !st.registrations[..i].iter().any(|o| o.nexus == r.nexus),
            "{:?} registered twice",
            r.nexus
        );
    }
    if let Some(r) = &st.reservation {
        assert!(
            st.registration(&r.holder).is_some(),
            "holder not registered"
        );
    }
    let again = persist::encode(NAA, &st);
    let back = persist::decode(&again, NAA, path).expect("what is written is read");
    assert_eq!(back, st);
}

/// What a device answers the pr-helper's SG_IO (`prhelper::sgio`): any
/// status, sense length, host and driver status and residual, any sense
/// and data bytes, for a PERSISTENT RESERVE IN or OUT with any other CDB
/// bytes; then the reply to QEMU. The reply's sense never passes the
/// buffer nor what the device wrote, its data never the allocation length;
/// a transport failure is a communication failure, one a multipath map
/// tries the next path on; and QEMU's assertions on the reply hold.
pub fn sgio_reply(data: &[u8]) {
    let _ = sgio_answer(&mut Unstructured::new(data));
}

fn sgio_answer(u: &mut Unstructured<'_>) -> Result<()> {
    use crate::prhelper::codec::SENSE_LEN;
    use crate::prhelper::sgio::{interpret, is_transport_failure, Answer};
    let mut cdb: [u8; helper::CDB_LEN] = u.arbitrary()?;
    cdb[0] = if u.arbitrary()? { 0x5e } else { 0x5f };
    let Ok(dir) = helper::check_request(&cdb, 1) else {
        return Ok(());
    };
    let in_len = match dir {
        Direction::In { len } => len,
        _ => 0,
    };
    let answer = Answer {
        status: u.arbitrary()?,
        sb_len_wr: u.arbitrary()?,
        host_status: if u.ratio(1, 4)? { u.arbitrary()? } else { 0 },
        driver_status: u.arbitrary()?,
        resid: u.arbitrary()?,
    };
    let mut sense = [0u8; SENSE_LEN];
    u.fill_buffer(&mut sense)?;
    let mut buf = vec![0u8; in_len];
    u.fill_buffer(&mut buf)?;
    let reply = interpret(&answer, &sense, buf);
    assert!(reply.sense.len() <= SENSE_LEN);
    assert!(reply.data.len() <= in_len);
    if answer.host_status != 0 {
        assert_eq!(reply.status, 0x02);
        assert!(is_transport_failure(&reply), "{reply:?}");
    } else {
        assert_eq!(reply.status, answer.status);
        if answer.status == 0x02 {
            let wrote = usize::from(answer.sb_len_wr).min(SENSE_LEN);
            assert_eq!(reply.sense, sense[..wrote]);
        }
    }
    check_reply_to_qemu(dir, &reply);
    Ok(())
}
