// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! ALUA (SPC-4 5.15): TPGS in INQUIRY, the target port group designator,
//! REPORT TARGET PORT GROUPS (SPC-4 6.36) and what each access state lets
//! through. The fixture's nexus comes through relative target port 1.

use super::*;

fn groups(f: &Fixture, one: AluaState, two: AluaState) {
    f.lu.add_port_group(PortGroup {
        id: 1,
        relative_port: 1,
        state: one,
    });
    f.lu.add_port_group(PortGroup {
        id: 2,
        relative_port: 2,
        state: two,
    });
}

/// REPORT TARGET PORT GROUPS with a PARAMETER DATA FORMAT and allocation.
fn rtpg(format: u8, alloc: u8) -> [u8; 12] {
    [
        0xa3,
        (format << 5) | 0x0a, // MAINTENANCE IN, REPORT TARGET PORT GROUPS
        0,
        0,
        0,
        0, // reserved
        0,
        0,
        0,
        alloc, // ALLOCATION LENGTH
        0,
        0, // reserved, CONTROL
    ]
}

#[test]
fn standard_inquiry_says_implicit_alua() {
    let f = fixture();
    let r = run(&f, &[0x12, 0, 0, 0, 36, 0], &[]);
    good(&r);
    // Byte 5: TPGS (bits 5-4) 01b.
    assert_eq!(r.data[5] & 0x30, 0x10);
}

#[test]
fn device_identification_names_the_target_port_group() {
    let f = fixture();
    groups(
        &f,
        AluaState::ActiveOptimized,
        AluaState::ActiveNonOptimized,
    );
    let r = run(&f, &[0x12, 0x01, 0x83, 0x00, 0xff, 0x00], &[]);
    good(&r);
    // Binary, target port association, type 5 (target port group), 1.
    let tpg = [0x01, 0x15, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01];
    assert!(r.data.windows(8).any(|w| w == tpg), "{:02x?}", r.data);
}

#[test]
fn report_target_port_groups_lists_every_group_with_its_state() {
    let f = fixture();
    groups(
        &f,
        AluaState::ActiveOptimized,
        AluaState::ActiveNonOptimized,
    );
    let r = run(&f, &rtpg(0b000, 0xff), &[]);
    good(&r);
    assert_eq!(
        r.data,
        vec![
            0, 0, 0, 24, // RETURN DATA LENGTH
            0x00, 0x0f, 0, 1, // active/optimized; U, S, AN, AO supported; group 1
            0, 0, 0, 1, // reserved, STATUS CODE, vendor, TARGET PORT COUNT
            0, 0, 0, 1, // relative target port 1
            0x01, 0x0f, 0, 2, // active/non-optimized; group 2
            0, 0, 0, 1, //
            0, 0, 0, 2, // relative target port 2
        ]
    );
}

#[test]
fn the_extended_header_gives_format_type_and_transition_time() {
    let f = fixture();
    groups(&f, AluaState::Standby, AluaState::ActiveOptimized);
    let r = run(&f, &rtpg(0b001, 0xff), &[]);
    good(&r);
    // RETURN DATA LENGTH counts what follows byte 3: 4 + 2 x 12.
    assert_eq!(&r.data[..8], &[0, 0, 0, 28, 0x10, 0, 0, 0]);
    assert_eq!(r.data[8], 0x02, "group 1 in standby");
}

#[test]
fn an_unknown_parameter_data_format_is_invalid_field_in_cdb() {
    let f = fixture();
    let r = run(&f, &rtpg(0b010, 0xff), &[]);
    assert_eq!(sense_of(&r), (ILLEGAL_REQUEST, 0x24, 0x00));
    // SKSV, C/D, BPV, bit 7; byte 1.
    assert_eq!(&r.sense[15..18], &[0xcf, 0x00, 0x01]);
}

#[test]
fn allocation_length_truncates_the_list() {
    let f = fixture();
    groups(
        &f,
        AluaState::ActiveOptimized,
        AluaState::ActiveNonOptimized,
    );
    let r = run(&f, &rtpg(0b000, 8), &[]);
    good(&r);
    assert_eq!(r.data, vec![0, 0, 0, 24, 0x00, 0x0f, 0, 1]);
}

#[test]
fn in_standby_medium_access_is_not_ready_and_inquiry_mode_sense_rtpg_are_not() {
    let f = fixture();
    groups(&f, AluaState::Standby, AluaState::ActiveOptimized);
    for cdb in [
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0][..], // READ(10)
        &[0x00, 0, 0, 0, 0, 0][..],             // TEST UNIT READY
    ] {
        let r = run(&f, cdb, &[]);
        assert_eq!(sense_of(&r), (0x2, 0x04, 0x0b), "{cdb:02x?}");
    }
    good(&run(&f, &[0x12, 0, 0, 0, 36, 0], &[]));
    good(&run(&f, &[0x1a, 0x08, 0x3f, 0, 0xff, 0], &[]));
    good(&run(&f, &rtpg(0, 0xff), &[]));
}

#[test]
fn unavailable_refuses_mode_sense_too() {
    let f = fixture();
    groups(&f, AluaState::Unavailable, AluaState::ActiveOptimized);
    let r = run(&f, &[0x1a, 0x08, 0x3f, 0, 0xff, 0], &[]);
    assert_eq!(sense_of(&r), (0x2, 0x04, 0x0c));
    good(&run(&f, &[0x03, 0, 0, 0, 18, 0], &[]));
    good(&run(&f, &rtpg(0, 0xff), &[]));
}

#[test]
fn active_non_optimized_serves_everything() {
    let f = fixture();
    groups(
        &f,
        AluaState::ActiveNonOptimized,
        AluaState::ActiveOptimized,
    );
    good(&run(&f, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[7u8; 512]));
    good(&run(&f, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]));
}
