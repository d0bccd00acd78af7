// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SCSI emulation tests: byte-literal CDBs against a logical unit on an
//! image in memory (`backstore::MemoryBackstore`, which can also fail on
//! demand). Expected sense bytes come from SPC-4/SBC-3 tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::backstore::{Backstore, MemoryBackstore, NullBackstore};

mod alua;
mod block_limits;
mod failing_disk;
mod get_lba_status;
mod layers;
mod sanitize;
mod sbc_commands;
mod write_atomic;
mod write_same;
mod xcopy;

fn nexus() -> Nexus {
    Nexus {
        id: 1,
        path: 1,
        relative_port: 1,
        initiator: "iqn.2026-11.test:a".into(),
    }
}

struct Fixture {
    /// The image behind `lu` (to inject faults); None for a null LU.
    store: Option<Arc<MemoryBackstore>>,
    lu: Arc<LogicalUnit>,
    target: Target,
}

/// A thin LU of `blocks` blocks on an image in memory.
fn fixture_with(blocks: u64, block_size: u32, read_only: bool) -> Fixture {
    let mut image = MemoryBackstore::new(blocks * u64::from(block_size));
    if read_only {
        image = image.read_only();
    }
    let store = Arc::new(image);
    let mut f = fixture_on(store.clone(), block_size);
    f.store = Some(store);
    f
}

/// A null LU (reads zeros, drops writes) of `blocks` blocks.
fn fixture_null(blocks: u64, block_size: u32) -> Fixture {
    fixture_on(
        Arc::new(NullBackstore::new(blocks * u64::from(block_size))),
        block_size,
    )
}

fn fixture_on(store: Arc<dyn Backstore>, block_size: u32) -> Fixture {
    fixture_lu(LogicalUnit::new(
        store,
        config(block_size, "/test/disk.img"),
    ))
}

fn fixture_lu(lu: LogicalUnit) -> Fixture {
    let lu = Arc::new(lu);
    let target = Target::new(BTreeMap::from([(0, lu.clone())]));
    Fixture {
        store: None,
        lu,
        target,
    }
}

/// A logical unit's configuration: `block_size`, an identity derived from
/// `name`, reservations on and no state file.
fn config(block_size: u32, name: &str) -> LuConfig {
    LuConfig {
        block_size,
        identity: Identity::derive(name),
        pr_file: None,
        pr_state: Default::default(),
        reservations: true,
    }
}

/// A 1 MiB image in memory, for LUs built by hand.
fn image() -> Arc<MemoryBackstore> {
    Arc::new(MemoryBackstore::new(1 << 20))
}

/// 2048 blocks of 512 bytes (1 MiB), writable.
fn fixture() -> Fixture {
    fixture_with(2048, 512, false)
}

/// Run a command to completion, performing any block I/O synchronously.
fn run_lun(f: &Fixture, lun: LunAddress, cdb: &[u8], data_out: &[u8], alloc: usize) -> Response {
    let mut dout: &[u8] = data_out;
    let outcome = f.target.execute(
        lun,
        Command {
            cdb,
            nexus: &nexus(),
            data_out: &mut dout,
            data_in_len: alloc,
        },
    );
    match outcome {
        Outcome::Done(r) => r,
        Outcome::Remote(l) => panic!("no passthrough LUN {l} in this fixture"),
        Outcome::Io(io) => {
            let mut buf = match io.kind {
                IoKind::Write => data_out.to_vec(),
                _ => vec![0u8; io.len as usize],
            };
            let result = f.lu.run_io_sync(&io, &mut buf);
            let mut r = f.lu.complete_io(&io, result);
            if io.kind == IoKind::Read && r.status == 0 {
                r.data = buf;
            }
            r
        }
    }
}

/// Execute on LUN 0 without performing the I/O: what the transport gets.
fn outcome(f: &Fixture, cdb: &[u8], data_out: &[u8]) -> Outcome {
    let mut dout: &[u8] = data_out;
    f.target.execute(
        LunAddress::Lun(0),
        Command {
            cdb,
            nexus: &nexus(),
            data_out: &mut dout,
            data_in_len: 1 << 20,
        },
    )
}

/// Run a command from another nexus (initiator b, port 2), with I/O.
fn run_as(f: &Fixture, n: &Nexus, cdb: &[u8], data_out: &[u8]) -> Response {
    let mut dout: &[u8] = data_out;
    match f.target.execute(
        LunAddress::Lun(0),
        Command {
            cdb,
            nexus: n,
            data_out: &mut dout,
            data_in_len: 1 << 20,
        },
    ) {
        Outcome::Done(r) => r,
        Outcome::Remote(l) => panic!("no passthrough LUN {l} in this fixture"),
        Outcome::Io(io) => {
            let mut buf = vec![0u8; io.len as usize];
            if io.kind == IoKind::Write {
                buf.copy_from_slice(&data_out[..io.len as usize]);
            }
            let result = f.lu.run_io_sync(&io, &mut buf);
            f.lu.complete_io(&io, result)
        }
    }
}

fn run(f: &Fixture, cdb: &[u8], data_out: &[u8]) -> Response {
    run_lun(f, LunAddress::Lun(0), cdb, data_out, 1 << 20)
}

/// (sense key, ASC, ASCQ) of a fixed-format CHECK CONDITION.
fn sense_of(r: &Response) -> (u8, u8, u8) {
    assert_eq!(r.status, 0x02, "expected CHECK CONDITION, got {r:?}");
    (r.sense[2] & 0x0f, r.sense[12], r.sense[13])
}

fn good(r: &Response) {
    assert_eq!(r.status, 0x00, "expected GOOD, got {r:?}");
}

const ILLEGAL_REQUEST: u8 = 0x5;

#[test]
fn inquiry_standard_data_reports_disk_spc4_and_cmdque() {
    let f = fixture();
    let r = run(&f, &[0x12, 0, 0, 0, 0xff, 0], &[]);
    good(&r);
    assert_eq!(r.data[0], 0x00); // connected, direct access block device
    assert_eq!(r.data[2], 0x06); // SPC-4
    assert_eq!(r.data[3] & 0x0f, 0x02); // response data format 2
    assert_eq!(r.data[7] & 0x02, 0x02); // CMDQUE
    assert_eq!(&r.data[8..16], b"VUSCSI  ");
}

#[test]
fn inquiry_allocation_length_truncates() {
    let f = fixture();
    let r = run(&f, &[0x12, 0, 0, 0, 5, 0], &[]);
    good(&r);
    assert_eq!(r.data.len(), 5);
}

#[test]
fn inquiry_to_absent_lun_reports_qualifier_011b_type_1fh() {
    let f = fixture();
    let r = run_lun(&f, LunAddress::Lun(7), &[0x12, 0, 0, 0, 36, 0], &[], 36);
    good(&r);
    assert_eq!(r.data[0], 0x7f);
}

#[test]
fn other_command_to_absent_lun_is_logical_unit_not_supported() {
    let f = fixture();
    let r = run_lun(&f, LunAddress::Lun(7), &[0x00, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x25, 0x00));
}

#[test]
fn inquiry_page_code_without_evpd_is_invalid_field_at_byte_2() {
    let f = fixture();
    let r = run(&f, &[0x12, 0, 0x80, 0, 0xff, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // SKSV | C/D, field pointer 0002h.
    assert_eq!(&r.sense[15..18], &[0xc0, 0x00, 0x02]);
}

#[test]
fn vpd_00_lists_supported_pages_in_order() {
    let f = fixture();
    let r = run(&f, &[0x12, 0x01, 0x00, 0, 0xff, 0], &[]);
    good(&r);
    assert_eq!(
        r.data,
        vec![0x00, 0x00, 0x00, 0x07, 0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2]
    );
}

#[test]
fn vpd_83_starts_with_naa_designator_of_the_lu() {
    let f = fixture();
    let r = run(&f, &[0x12, 0x01, 0x83, 0, 0xff, 0], &[]);
    good(&r);
    // Designator: binary, LU association, NAA, length 8, NAA 3 in the top nibble.
    assert_eq!(&r.data[4..8], &[0x01, 0x03, 0x00, 0x08]);
    assert_eq!(r.data[8] >> 4, 0x3);
    let naa = u64::from_be_bytes(r.data[8..16].try_into().unwrap());
    assert_eq!(naa, Identity::derive("/test/disk.img").naa);
}

#[test]
fn vpd_b2_reports_thin_provisioning_with_unmap() {
    let f = fixture();
    let r = run(&f, &[0x12, 0x01, 0xb2, 0, 0xff, 0], &[]);
    good(&r);
    assert_eq!(r.data[5] & 0xe0, 0xe0); // LBPU, LBPWS, LBPWS10
    assert_eq!(r.data[6] & 0x07, 0x02); // thin
}

#[test]
fn unknown_vpd_page_is_invalid_field() {
    let f = fixture();
    let r = run(&f, &[0x12, 0x01, 0xc7, 0, 0xff, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn unknown_opcode_is_invalid_command_operation_code() {
    let f = fixture();
    let r = run(&f, &[0xc0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x20, 0x00));
}

#[test]
fn naca_bit_in_control_byte_is_invalid_field() {
    let f = fixture();
    let r = run(&f, &[0x00, 0, 0, 0, 0, 0x04], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    assert_eq!(&r.sense[15..18], &[0xca, 0x00, 0x05]); // byte 5, bit 2
}

#[test]
fn new_nexus_sees_power_on_unit_attention_once() {
    let f = fixture();
    f.target.attach(&nexus(), |_| None);
    let r = run(&f, &[0x00, 0, 0, 0, 0, 0], &[]);
    assert_eq!(sense_of(&r), (0x6, 0x29, 0x00));
    good(&run(&f, &[0x00, 0, 0, 0, 0, 0], &[]));
}

#[test]
fn inquiry_does_not_consume_a_unit_attention() {
    let f = fixture();
    f.target.attach(&nexus(), |_| None);
    good(&run(&f, &[0x12, 0, 0, 0, 36, 0], &[]));
    assert_eq!(
        sense_of(&run(&f, &[0x00, 0, 0, 0, 0, 0], &[])),
        (0x6, 0x29, 0x00)
    );
}

#[test]
fn request_sense_reports_and_clears_the_unit_attention() {
    let f = fixture();
    f.lu.lun_reset();
    f.lu.establish_ua(nexus().id, Sense::BUS_DEVICE_RESET_FUNCTION_OCCURRED);
    let r = run(&f, &[0x03, 0, 0, 0, 252, 0], &[]);
    good(&r);
    assert_eq!(
        (r.data[0], r.data[2], r.data[12], r.data[13]),
        (0x70, 0x06, 0x29, 0x03)
    );
    let r = run(&f, &[0x03, 0, 0, 0, 252, 0], &[]);
    assert_eq!((r.data[2], r.data[12]), (0x00, 0x00));
}

#[test]
fn request_sense_desc_bit_returns_descriptor_format() {
    let f = fixture();
    let r = run(&f, &[0x03, 0x01, 0, 0, 252, 0], &[]);
    good(&r);
    assert_eq!(r.data, vec![0x72, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn report_luns_lists_configured_luns() {
    let f = fixture();
    let r = run(&f, &[0xa0, 0, 0x00, 0, 0, 0, 0, 0, 0, 0xff, 0, 0], &[]);
    good(&r);
    assert_eq!(r.data, vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn report_luns_select_1_returns_only_the_well_known_lun() {
    let f = fixture();
    let r = run_lun(
        &f,
        LunAddress::ReportLunsWellKnown,
        &[0xa0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0, 0],
        &[],
        255,
    );
    good(&r);
    assert_eq!(&r.data[8..16], &[0xc1, 0x01, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn report_luns_allocation_under_16_is_invalid_field() {
    let f = fixture();
    let r = run(&f, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn read_capacity10_returns_last_lba_and_block_size() {
    let f = fixture();
    let r = run(&f, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    good(&r);
    assert_eq!(r.data, vec![0x00, 0x00, 0x07, 0xff, 0x00, 0x00, 0x02, 0x00]);
}

#[test]
fn read_capacity16_sets_lbpme_and_lbprz_for_a_thin_file() {
    let f = fixture_with(100, 4096, false);
    let r = run(
        &f,
        &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
    );
    good(&r);
    assert_eq!(&r.data[0..12], &[0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 0x10, 0]);
    assert_eq!(r.data[14], 0xc0);
}

#[test]
fn write10_then_read10_round_trips() {
    let f = fixture();
    let data: Vec<u8> = (0..1024).map(|i| i as u8).collect();
    // WRITE(10) LBA 5, 2 blocks.
    good(&run(&f, &[0x2a, 0, 0, 0, 0, 5, 0, 0, 2, 0], &data));
    let r = run(&f, &[0x28, 0, 0, 0, 0, 5, 0, 0, 2, 0], &[]);
    good(&r);
    assert_eq!(r.data, data);
}

#[test]
fn read16_past_capacity_returns_lba_out_of_range() {
    let f = fixture();
    // READ(16) LBA 2047, 2 blocks: one past the end.
    let r = run(
        &f,
        &[0x88, 0, 0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 0, 2, 0, 0],
        &[],
    );
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}

#[test]
fn read16_lba_overflow_returns_lba_out_of_range() {
    let f = fixture();
    let r = run(
        &f,
        &[
            0x88, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2, 0, 0,
        ],
        &[],
    );
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}

#[test]
fn read6_transfer_length_zero_means_256_blocks() {
    let f = fixture();
    match outcome(&f, &[0x08, 0, 0, 0, 0, 0], &[]) {
        Outcome::Io(io) => assert_eq!((io.blocks, io.len), (256, 256 * 512)),
        other => panic!("expected I/O, got {other:?}"),
    }
}

#[test]
fn read10_with_rdprotect_is_invalid_field() {
    let f = fixture();
    let r = run(&f, &[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn write_to_read_only_lun_is_data_protect_write_protected() {
    let f = fixture_with(2048, 512, true);
    let r = run(&f, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0u8; 512]);
    assert_eq!(sense_of(&r), (0x7, 0x27, 0x00));
}

#[test]
fn write_with_fua_is_a_synchronous_write() {
    let f = fixture();
    let o = outcome(&f, &[0x2a, 0x08, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    let Outcome::Io(io) = o else {
        panic!("expected I/O")
    };
    assert!(io.sync);
    good(&f.lu.complete_io(&io, Ok(())));
}

#[test]
fn read_error_is_medium_error_with_lba_in_information() {
    let f = fixture();
    let io = BlockIo {
        kind: IoKind::Read,
        lba: 0x42,
        blocks: 1,
        offset: 0x42 * 512,
        len: 512,
        sync: false,
    };
    let r =
        f.lu.complete_io(&io, Err(std::io::Error::from_raw_os_error(libc::EIO)));
    assert_eq!(sense_of(&r), (0x3, 0x11, 0x00));
    assert_eq!(r.sense[0], 0xf0); // VALID
    assert_eq!(&r.sense[3..7], &[0, 0, 0, 0x42]);
}

#[test]
fn verify_bytchk1_miscompare_reports_the_offset() {
    let f = fixture();
    good(&run(&f, &[0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[0xaa; 512]));
    let mut expected = vec![0xaau8; 512];
    expected[100] = 0;
    let r = run(&f, &[0x2f, 0x02, 0, 0, 0, 1, 0, 0, 1, 0], &expected);
    assert_eq!(sense_of(&r), (0xe, 0x1d, 0x00));
    assert_eq!(&r.sense[3..7], &[0, 0, 0, 100]);
}

#[test]
fn verify_bytchk3_compares_one_block_against_each() {
    let f = fixture();
    good(&run(&f, &[0x2a, 0, 0, 0, 0, 1, 0, 0, 2, 0], &[0x5a; 1024]));
    good(&run(
        &f,
        &[0x2f, 0x06, 0, 0, 0, 1, 0, 0, 2, 0],
        &[0x5a; 512],
    ));
}

#[test]
fn write_and_verify_writes_the_data() {
    let f = fixture();
    good(&run(
        &f,
        &[0x2e, 0x02, 0, 0, 0, 3, 0, 0, 1, 0],
        &[0x77; 512],
    ));
    let r = run(&f, &[0x28, 0, 0, 0, 0, 3, 0, 0, 1, 0], &[]);
    assert_eq!(r.data, vec![0x77; 512]);
}

#[test]
fn write_same16_with_unmap_deallocates_the_range() {
    let f = fixture();
    good(&run(
        &f,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0x08, 0, 0],
        &vec![0x11; 2048 * 512][..0x800 * 512],
    ));
    // WRITE SAME(16) UNMAP, LBA 0, 2048 blocks, zero pattern.
    good(&run(
        &f,
        &[0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0],
        &[0u8; 512],
    ));
    let r = run(
        &f,
        &[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0],
        &[],
    );
    good(&r);
    assert_eq!(r.data[20], 1, "LBA 0 should be deallocated: {:?}", r.data);
}

#[test]
fn write_same10_repeats_the_pattern() {
    let f = fixture();
    good(&run(&f, &[0x41, 0, 0, 0, 0, 10, 0, 0, 3, 0], &[0xab; 512]));
    let r = run(&f, &[0x28, 0, 0, 0, 0, 10, 0, 0, 3, 0], &[]);
    assert_eq!(r.data, vec![0xab; 1536]);
}

#[test]
fn write_same_with_zero_blocks_is_invalid_field_as_wsnz_says() {
    let f = fixture();
    let r = run(&f, &[0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[0u8; 512]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn unmap_descriptor_makes_blocks_read_zero_and_deallocated() {
    let f = fixture();
    good(&run(
        &f,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 16, 0],
        &[0x33; 16 * 512],
    ));
    let param = [
        0x00, 0x16, 0x00, 0x10, 0, 0, 0, 0, // data length 22, descriptor length 16
        0, 0, 0, 0, 0, 0, 0, 0, // LBA 0
        0, 0, 0, 16, 0, 0, 0, 0, // 16 blocks
    ];
    good(&run(&f, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &param));
    let r = run(&f, &[0x28, 0, 0, 0, 0, 0, 0, 0, 16, 0], &[]);
    assert_eq!(r.data, vec![0u8; 16 * 512]);
}

#[test]
fn unmap_parameter_list_shorter_than_8_is_parameter_list_length_error() {
    let f = fixture();
    let r = run(&f, &[0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], &[0, 0, 0, 0]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x1a, 0x00));
}

#[test]
fn unmap_past_capacity_is_lba_out_of_range() {
    let f = fixture();
    let param = [
        0x00, 0x16, 0x00, 0x10, 0, 0, 0, 0, // header
        0, 0, 0, 0, 0, 0, 0x07, 0xff, // LBA 2047
        0, 0, 0, 2, 0, 0, 0, 0, // 2 blocks
    ];
    let r = run(&f, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &param);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x21, 0x00));
}

#[test]
fn get_lba_status_reports_mapped_then_deallocated() {
    let f = fixture();
    // Write 64 KiB at LBA 0 (filesystem extents are at least 4 KiB).
    good(&run(
        &f,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 128, 0],
        &[1u8; 128 * 512],
    ));
    let r = run(
        &f,
        &[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 40, 0, 0],
        &[],
    );
    good(&r);
    // First descriptor: LBA 0, 128 blocks, mapped.
    assert_eq!(&r.data[8..21], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 128, 0]);
    // Second: LBA 128, deallocated.
    assert_eq!(r.data[31], 128);
    assert_eq!(r.data[36], 1);
}

#[test]
fn compare_and_write_replaces_matching_data() {
    let f = fixture();
    good(&run(&f, &[0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0], &[0x01; 512]));
    let mut dout = vec![0x01u8; 512];
    dout.extend_from_slice(&[0x02; 512]);
    good(&run(
        &f,
        &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0],
        &dout,
    ));
    let r = run(&f, &[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0], &[]);
    assert_eq!(r.data, vec![0x02; 512]);
}

#[test]
fn compare_and_write_miscompare_leaves_data_and_reports_offset() {
    let f = fixture();
    good(&run(&f, &[0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0], &[0x01; 512]));
    let mut dout = vec![0x01u8; 512];
    dout[7] = 0xff;
    dout.extend_from_slice(&[0x02; 512]);
    let r = run(
        &f,
        &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0],
        &dout,
    );
    assert_eq!(sense_of(&r), (0xe, 0x1d, 0x00));
    assert_eq!(&r.sense[3..7], &[0, 0, 0, 7]);
    let r = run(&f, &[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0], &[]);
    assert_eq!(r.data, vec![0x01; 512]);
}

#[test]
fn mode_sense6_caching_page_reports_wce() {
    let f = fixture();
    let r = run(&f, &[0x1a, 0x08, 0x08, 0, 0xff, 0], &[]);
    good(&r);
    // Header (4, no block descriptor) then page 08h, length 12h, WCE set.
    assert_eq!(&r.data[0..4], &[3 + 20, 0, 0x10, 0]);
    assert_eq!(&r.data[4..7], &[0x08, 0x12, 0x04]);
}

#[test]
fn mode_sense10_all_pages_with_long_lba_block_descriptor() {
    let f = fixture();
    let r = run(&f, &[0x5a, 0x10, 0x3f, 0, 0, 0, 0, 0x01, 0x00, 0], &[]);
    good(&r);
    assert_eq!(r.data[4] & 1, 1); // LONGLBA
    assert_eq!(&r.data[6..8], &[0, 16]); // one long descriptor
    assert_eq!(&r.data[8..16], &2048u64.to_be_bytes());
    let total = 8 + 16 + 12 + 20 + 12 + 12;
    assert_eq!(r.data.len(), total);
}

#[test]
fn mode_sense_saved_values_are_not_supported() {
    let f = fixture();
    let r = run(&f, &[0x1a, 0, 0xc8, 0, 0xff, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x39, 0x00));
}

#[test]
fn mode_sense_changeable_values_show_wce_and_d_sense() {
    let f = fixture();
    let r = run(&f, &[0x1a, 0x08, 0x48, 0, 0xff, 0], &[]);
    assert_eq!(r.data[6], 0x04);
    let r = run(&f, &[0x1a, 0x08, 0x4a, 0, 0xff, 0], &[]);
    assert_eq!(r.data[6], 0x04);
}

#[test]
fn mode_select_clears_wce_and_writes_become_synchronous() {
    let f = fixture();
    let mut p = vec![0u8, 0, 0, 0]; // mode parameter header(6)
    p.extend_from_slice(&[0x08, 0x12]);
    p.extend_from_slice(&[0u8; 18]); // WCE = 0
    good(&run(&f, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p));
    let r = run(&f, &[0x1a, 0x08, 0x08, 0, 0xff, 0], &[]);
    assert_eq!(r.data[6] & 0x04, 0);
    let o = outcome(&f, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
    let Outcome::Io(io) = o else { panic!() };
    assert!(io.sync);
    f.lu.complete_io(&io, Ok(()));
}

#[test]
fn mode_select_changing_a_fixed_field_is_invalid_field_in_parameter_list() {
    let f = fixture();
    let mut p = vec![0u8, 0, 0, 0];
    p.extend_from_slice(&[0x08, 0x12, 0x05]); // WCE + RCD; RCD is not changeable
    p.extend_from_slice(&[0u8; 17]);
    let r = run(&f, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x26, 0x00));
    // Field pointer: parameter byte 6, bit 0 (C/D = 0).
    assert_eq!(&r.sense[15..18], &[0x88, 0x00, 0x06]);
}

#[test]
fn mode_select_with_sp_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(&f, &[0x15, 0x11, 0, 0, 0, 0], &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn d_sense_switches_to_descriptor_format() {
    let f = fixture();
    let mut p = vec![0u8, 0, 0, 0];
    p.extend_from_slice(&[0x0a, 0x0a, 0x04, 0x10, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
    // Busy timeout is not changeable: send back the current value.
    p[10] = 0;
    p[11] = 0;
    p[12] = 0xff;
    p[13] = 0xff;
    good(&run(&f, &[0x15, 0x10, 0, 0, p.len() as u8, 0], &p));
    let r = run(&f, &[0xc0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.sense[0], 0x72);
}

#[test]
fn rsoc_all_commands_lists_every_table_entry_the_lu_offers() {
    // A null LU offers every command of the table, WRITE ATOMIC included.
    let f = fixture_null(2048, 512);
    let r = run(&f, &[0xa3, 0x0c, 0x00, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]);
    good(&r);
    let len = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, 8 * super::opcodes::OPCODES.len());
    // First descriptor: TEST UNIT READY, no service action, CDB length 6.
    assert_eq!(&r.data[4..12], &[0x00, 0, 0, 0, 0, 0, 0, 6]);
}

#[test]
fn rsoc_one_command_returns_exact_usage_data() {
    let f = fixture();
    let r = run(
        &f,
        &[0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 0, 0xff, 0, 0],
        &[],
    );
    good(&r);
    assert_eq!(
        r.data,
        vec![0, 0x03, 0, 10, 0x28, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04]
    );
}

#[test]
fn rsoc_unsupported_opcode_reports_support_001b() {
    let f = fixture();
    let r = run(
        &f,
        &[0xa3, 0x0c, 0x01, 0xc0, 0, 0, 0, 0, 0, 0xff, 0, 0],
        &[],
    );
    good(&r);
    assert_eq!(r.data, vec![0, 0x01, 0, 0]);
}

#[test]
fn rsoc_option_1_for_opcode_with_service_actions_is_invalid_field() {
    let f = fixture();
    let r = run(
        &f,
        &[0xa3, 0x0c, 0x01, 0x9e, 0, 0, 0, 0, 0, 0xff, 0, 0],
        &[],
    );
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
}

#[test]
fn rstmf_reports_supported_functions_without_clear_aca() {
    let f = fixture();
    let r = run(&f, &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[]);
    good(&r);
    assert_eq!(r.data, vec![0xdc, 0x03, 0, 0]);
}

#[test]
fn stopped_unit_is_not_ready_until_started() {
    let f = fixture();
    good(&run(&f, &[0x1b, 0, 0, 0, 0x00, 0], &[]));
    assert_eq!(
        sense_of(&run(&f, &[0x00, 0, 0, 0, 0, 0], &[])),
        (0x2, 0x04, 0x02)
    );
    good(&run(&f, &[0x1b, 0, 0, 0, 0x01, 0], &[]));
    good(&run(&f, &[0x00, 0, 0, 0, 0, 0], &[]));
}

#[test]
fn synchronize_cache_is_a_flush() {
    let f = fixture();
    let o = outcome(&f, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert!(matches!(
        o,
        Outcome::Io(BlockIo {
            kind: IoKind::Flush,
            ..
        })
    ));
}

#[test]
fn lun_reset_sets_unit_attention_29_03() {
    let f = fixture();
    f.lu.attach(&nexus(), None);
    f.lu.take_ua(nexus().id);
    f.lu.lun_reset();
    assert_eq!(
        sense_of(&run(&f, &[0x00, 0, 0, 0, 0, 0], &[])),
        (0x6, 0x29, 0x03)
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Any CDB, any data-out, any buffer size, any LUN: the SCSI layer
        /// answers without panicking, with sense that fits virtio's 96 bytes
        /// and a status from SAM-5.
        #[test]
        fn any_cdb_gets_a_well_formed_answer(
            cdb in proptest::collection::vec(any::<u8>(), 0..40),
            opcode in prop_oneof![
                Just(None),
                proptest::sample::select(super::super::opcodes::OPCODES.iter().map(|o| o.opcode).collect::<Vec<_>>()).prop_map(Some),
            ],
            data_out in proptest::collection::vec(any::<u8>(), 0..2048),
            alloc in 0usize..70000,
            lun in 0u16..3,
        ) {
            let f = fixture_with(64, 512, false);
            let mut cdb = cdb;
            if let (Some(op), Some(b)) = (opcode, cdb.first_mut()) {
                *b = op;
            }
            let r = run_lun(&f, LunAddress::Lun(lun), &cdb, &data_out, alloc);
            prop_assert!(r.sense.len() <= 96);
            prop_assert!([0x00, 0x02, 0x08].contains(&r.status), "status {:#x}", r.status);
            if r.status == 0x02 {
                prop_assert!(!r.sense.is_empty());
            }
        }
    }
}

mod reservations {
    use super::*;

    fn nexus_b() -> Nexus {
        Nexus {
            id: 2,
            path: 2,
            relative_port: 2,
            initiator: "iqn.2026-11.test:b".into(),
        }
    }

    /// PERSISTENT RESERVE OUT with a 24-byte basic parameter list.
    fn prout(sa: u8, ty: u8, key: u64, sa_key: u64, flags: u8) -> (Vec<u8>, Vec<u8>) {
        let cdb = vec![0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
        let mut p = key.to_be_bytes().to_vec();
        p.extend_from_slice(&sa_key.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, flags, 0, 0, 0]);
        (cdb, p)
    }

    fn register(f: &Fixture, n: &Nexus, key: u64) {
        let (c, p) = prout(0x00, 0, 0, key, 0);
        good(&run_as(f, n, &c, &p));
    }

    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];

    #[test]
    fn read_keys_shows_a_registration_made_through_another_nexus() {
        let f = fixture();
        register(&f, &nexus(), 0xabc123);
        let r = run_as(&f, &nexus_b(), &[0x5e, 0x00, 0, 0, 0, 0, 0, 0, 64, 0], &[]);
        good(&r);
        assert_eq!(&r.data[4..8], &[0, 0, 0, 8]);
        assert_eq!(&r.data[8..16], &0xabc123u64.to_be_bytes());
    }

    #[test]
    fn exclusive_access_makes_reads_from_other_nexus_conflict() {
        let f = fixture();
        register(&f, &nexus(), 0xabc123);
        let (c, p) = prout(0x01, 0x03, 0xabc123, 0, 0);
        good(&run_as(&f, &nexus(), &c, &p));
        assert_eq!(run_as(&f, &nexus_b(), &READ10, &[]).status, 0x18);
        good(&run_as(&f, &nexus(), &READ10, &[]));
        // INQUIRY never conflicts.
        good(&run_as(&f, &nexus_b(), &[0x12, 0, 0, 0, 36, 0], &[]));
    }

    #[test]
    fn write_exclusive_lets_others_read_but_not_write() {
        let f = fixture();
        register(&f, &nexus(), 1);
        let (c, p) = prout(0x01, 0x01, 1, 0, 0);
        good(&run_as(&f, &nexus(), &c, &p));
        good(&run_as(&f, &nexus_b(), &READ10, &[]));
        assert_eq!(run_as(&f, &nexus_b(), &WRITE10, &[0u8; 512]).status, 0x18);
    }

    #[test]
    fn preempt_gives_the_preempted_nexus_registrations_preempted() {
        let f = fixture();
        f.lu.attach(&nexus(), None);
        f.lu.attach(&nexus_b(), None);
        f.lu.take_ua(1);
        f.lu.take_ua(2);
        register(&f, &nexus(), 0xa);
        register(&f, &nexus_b(), 0xb);
        let (c, p) = prout(0x01, 0x03, 0xa, 0, 0);
        good(&run_as(&f, &nexus(), &c, &p));
        let (c, p) = prout(0x04, 0x03, 0xb, 0xa, 0);
        good(&run_as(&f, &nexus_b(), &c, &p));
        let r = run_as(&f, &nexus(), &[0x00, 0, 0, 0, 0, 0], &[]);
        assert_eq!(sense_of(&r), (0x6, 0x2a, 0x05));
        assert_eq!(run_as(&f, &nexus(), &WRITE10, &[0u8; 512]).status, 0x18);
    }

    #[test]
    fn preempt_and_abort_aborts_the_preempted_nexus_commands_only() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let f = fixture();
        let aborted_a = Arc::new(AtomicUsize::new(0));
        let aborted_b = Arc::new(AtomicUsize::new(0));
        let hook = |c: &Arc<AtomicUsize>| -> Option<AbortHook> {
            let c = c.clone();
            Some(Arc::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }))
        };
        f.lu.attach(&nexus(), hook(&aborted_a));
        f.lu.attach(&nexus_b(), hook(&aborted_b));
        f.lu.take_ua(1);
        f.lu.take_ua(2);
        register(&f, &nexus(), 0xa);
        register(&f, &nexus_b(), 0xb);
        let (c, p) = prout(0x01, 0x01, 0xa, 0, 0);
        good(&run_as(&f, &nexus(), &c, &p));
        let (c, p) = prout(0x05, 0x01, 0xb, 0xa, 0); // PREEMPT AND ABORT
        good(&run_as(&f, &nexus_b(), &c, &p));
        assert_eq!(aborted_a.load(Ordering::SeqCst), 1);
        assert_eq!(aborted_b.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn wrong_parameter_list_length_is_parameter_list_length_error() {
        let f = fixture();
        let r = run_as(
            &f,
            &nexus(),
            &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 20, 0],
            &[0u8; 20],
        );
        assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x1a, 0x00));
    }

    #[test]
    fn reserve_with_element_scope_is_invalid_field_in_cdb() {
        let f = fixture();
        register(&f, &nexus(), 1);
        let (c, p) = prout(0x01, 0x23, 1, 0, 0);
        let r = run_as(&f, &nexus(), &c, &p);
        assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    }

    #[test]
    fn aptpl_write_failure_is_insufficient_registration_resources_and_changes_nothing() {
        let blocker = tempfile::NamedTempFile::new().unwrap();
        let f = fixture_lu(LogicalUnit::new(
            image(),
            LuConfig {
                // A path under a regular file: it can never be written.
                pr_file: Some(blocker.path().join("state.pr")),
                ..config(512, "/aptpl")
            },
        ));
        let (c, p) = prout(0x00, 0, 0, 0x77, 0x01); // REGISTER with APTPL
        let r = run_as(&f, &nexus(), &c, &p);
        assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x55, 0x04));
        let keys = run_as(&f, &nexus(), &[0x5e, 0x00, 0, 0, 0, 0, 0, 0, 64, 0], &[]);
        assert_eq!(&keys.data[4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn aptpl_state_is_saved_and_loads_into_a_new_logical_unit() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lu.pr");
        let id = Identity::derive("/aptpl2");
        let store = image();
        let make = |pr_state| {
            Arc::new(LogicalUnit::new(
                store.clone(),
                LuConfig {
                    block_size: 512,
                    identity: id.clone(),
                    pr_file: Some(state.clone()),
                    pr_state,
                    reservations: true,
                },
            ))
        };
        let lu = make(Default::default());
        let target = Target::new(BTreeMap::from([(0, lu.clone())]));
        let mut dout: &[u8] = &[];
        let (c, p) = prout(0x00, 0, 0, 0x99, 0x01);
        let mut pd: &[u8] = &p;
        target.execute(
            LunAddress::Lun(0),
            Command {
                cdb: &c,
                nexus: &nexus(),
                data_out: &mut pd,
                data_in_len: 0,
            },
        );
        let (c, p) = prout(0x01, 0x03, 0x99, 0, 0);
        let mut pd: &[u8] = &p;
        target.execute(
            LunAddress::Lun(0),
            Command {
                cdb: &c,
                nexus: &nexus(),
                data_out: &mut pd,
                data_in_len: 0,
            },
        );
        let loaded = crate::scsi::pr::load(&state, id.naa).unwrap().unwrap();
        let lu2 = make(loaded);
        let t2 = Target::new(BTreeMap::from([(0, lu2)]));
        let o = t2.execute(
            LunAddress::Lun(0),
            Command {
                cdb: &READ10,
                nexus: &nexus_b(),
                data_out: &mut dout,
                data_in_len: 512,
            },
        );
        assert!(matches!(o, Outcome::Done(Response { status: 0x18, .. })));
    }

    #[test]
    fn spc2_reserve_blocks_other_nexus_and_lun_reset_clears_it() {
        let f = fixture();
        good(&run_as(&f, &nexus(), &[0x16, 0, 0, 0, 0, 0], &[]));
        assert_eq!(run_as(&f, &nexus_b(), &READ10, &[]).status, 0x18);
        assert_eq!(
            run_as(&f, &nexus_b(), &[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], &[]).status,
            0x18
        );
        f.lu.lun_reset();
        good(&run_as(&f, &nexus_b(), &READ10, &[]));
    }
}

mod passthrough {
    use super::*;

    #[test]
    fn commands_to_a_passthrough_lun_go_through_but_report_luns_is_answered_here() {
        let f = fixture();
        let t = Target::with_remote(BTreeMap::from([(0, f.lu.clone())]), vec![3]);
        let mut dout: &[u8] = &[];
        let o = t.execute(
            LunAddress::Lun(3),
            Command {
                cdb: &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                nexus: &nexus(),
                data_out: &mut dout,
                data_in_len: 512,
            },
        );
        assert_eq!(o, Outcome::Remote(3));
        let o = t.execute(
            LunAddress::Lun(3),
            Command {
                cdb: &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0, 0],
                nexus: &nexus(),
                data_out: &mut dout,
                data_in_len: 255,
            },
        );
        let Outcome::Done(r) = o else {
            panic!("REPORT LUNS was passed through")
        };
        // LUNs 0 and 3.
        assert_eq!(&r.data[0..4], &[0, 0, 0, 16]);
        assert_eq!(r.data[8 + 8 + 1], 3);
    }
}

/// A backstore shared with other writers (`share-rw`): reservations could
/// not be enforced there, so every reservation command is refused as
/// unsupported rather than pretended.
#[test]
fn reservations_are_refused_on_a_logical_unit_shared_with_other_writers() {
    let f = fixture_lu(LogicalUnit::new(
        image(),
        LuConfig {
            reservations: false,
            ..config(512, "/shared")
        },
    ));
    // Consume the power-on unit attention.
    run(&f, &[0x00, 0, 0, 0, 0, 0], &[]);
    let register = [0u8; 24];
    for (cdb, data) in [
        // PERSISTENT RESERVE IN, READ KEYS, allocation length 64.
        (&[0x5e, 0x00, 0, 0, 0, 0, 0, 0, 64, 0][..], &[][..]),
        // PERSISTENT RESERVE OUT, REGISTER, parameter list length 24.
        (&[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0][..], &register[..]),
        // RESERVE(6), RELEASE(6).
        (&[0x16, 0, 0, 0, 0, 0][..], &[][..]),
        (&[0x17, 0, 0, 0, 0, 0][..], &[][..]),
        // RESERVE(10), RELEASE(10).
        (&[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], &[][..]),
        (&[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], &[][..]),
    ] {
        let r = run(&f, cdb, data);
        // ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20h/00h).
        assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x20, 0x00), "{cdb:02x?}");
    }
}

/// The destination controller of a live migration inside one daemon: the
/// same initiator port and relative target port, so the same nexus on
/// another path (controller).
fn nexus_second_path() -> Nexus {
    Nexus { path: 9, ..nexus() }
}

/// TEST UNIT READY's sense (or GOOD) for `n`.
fn tur_as(f: &Fixture, n: &Nexus) -> Response {
    run_as(f, n, &[0x00, 0, 0, 0, 0, 0], &[])
}

#[test]
fn a_second_path_of_a_nexus_keeps_its_unit_attentions_without_a_new_one() {
    let f = fixture();
    f.target.attach(&nexus(), |_| None);
    // Consume the power-on unit attention; a mode change leaves another
    // one pending for this nexus.
    assert_eq!(sense_of(&tur_as(&f, &nexus())), (0x6, 0x29, 0x00));
    f.lu.establish_ua(
        nexus().id,
        crate::scsi::sense::Sense::MODE_PARAMETERS_CHANGED,
    );
    // The migration destination attaches: no power-on, nothing lost.
    f.target.attach(&nexus_second_path(), |_| None);
    // The source goes (its QEMU quits).
    f.target.detach(&nexus());
    // Reported once, through the destination, then nothing.
    assert_eq!(
        sense_of(&tur_as(&f, &nexus_second_path())),
        (0x6, 0x2a, 0x01)
    );
    good(&tur_as(&f, &nexus_second_path()));
}

#[test]
fn a_nexus_is_lost_only_with_its_last_path() {
    let f = fixture();
    f.target.attach(&nexus(), |_| None);
    f.target.attach(&nexus_second_path(), |_| None);
    let _ = tur_as(&f, &nexus());
    // RESERVE(6) through the first path: an SPC-2 reservation of the nexus.
    good(&run_as(&f, &nexus(), &[0x16, 0, 0, 0, 0, 0], &[]));
    f.target.detach(&nexus());
    // Still held: a second nexus conflicts.
    f.target.attach(&nexus_b_for_paths(), |_| None);
    let _ = tur_as(&f, &nexus_b_for_paths());
    // READ(10) of one block.
    let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    assert_eq!(run_as(&f, &nexus_b_for_paths(), &read, &[]).status, 0x18);
    // The last path goes: I_T nexus loss releases it.
    f.target.detach(&nexus_second_path());
    good(&run_as(&f, &nexus_b_for_paths(), &read, &[]));
}

fn nexus_b_for_paths() -> Nexus {
    Nexus {
        id: 3,
        path: 3,
        relative_port: 3,
        initiator: "iqn.2026-11.test:other".into(),
    }
}
