// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The persistent reservation state machine against SPC-4 5.13, one rule
//! per test.

use super::codec::*;
use super::*;

fn a() -> ItNexus {
    ItNexus::new("iqn.2026-11.test:a", 1)
}
fn b() -> ItNexus {
    ItNexus::new("iqn.2026-11.test:b", 2)
}
fn c() -> ItNexus {
    ItNexus::new("iqn.2026-11.test:c", 3)
}

fn params(key: u64, sa_key: u64) -> ProutParams {
    ProutParams {
        key,
        sa_key,
        ..ProutParams::default()
    }
}

/// A and B registered with keys 0xa and 0xb.
fn two_registered() -> PrState {
    let mut s = PrState::default();
    s.register(&a(), &params(0, 0xa), false).unwrap();
    s.register(&b(), &params(0, 0xb), false).unwrap();
    s
}

const ALL_TYPES: [PrType; 6] = [
    PrType::WriteExclusive,
    PrType::ExclusiveAccess,
    PrType::WriteExclusiveRegistrantsOnly,
    PrType::ExclusiveAccessRegistrantsOnly,
    PrType::WriteExclusiveAllRegistrants,
    PrType::ExclusiveAccessAllRegistrants,
];

#[test]
fn register_adds_key_and_bumps_generation() {
    let mut s = PrState::default();
    s.register(&a(), &params(0, 0xabc123), false).unwrap();
    assert_eq!(s.registration(&a()).unwrap().key, 0xabc123);
    assert_eq!(s.generation, 1);
}

#[test]
fn register_from_unregistered_nexus_with_nonzero_key_conflicts() {
    let mut s = PrState::default();
    assert_eq!(
        s.register(&a(), &params(5, 6), false),
        Err(PrError::Conflict)
    );
}

#[test]
fn register_with_wrong_key_conflicts() {
    let mut s = two_registered();
    assert_eq!(
        s.register(&a(), &params(0xbad, 0x1), false),
        Err(PrError::Conflict)
    );
}

#[test]
fn register_and_ignore_replaces_key_without_checking() {
    let mut s = two_registered();
    s.register(&a(), &params(0xbad, 0x77), true).unwrap();
    assert_eq!(s.registration(&a()).unwrap().key, 0x77);
}

#[test]
fn register_with_zero_service_key_unregisters() {
    let mut s = two_registered();
    s.register(&a(), &params(0xa, 0), false).unwrap();
    assert!(s.registration(&a()).is_none());
    assert_eq!(s.registrations.len(), 1);
}

#[test]
fn unregistering_the_holder_releases_the_reservation() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::WriteExclusive).unwrap();
    s.register(&a(), &params(0xa, 0), false).unwrap();
    assert_eq!(s.reservation, None);
}

#[test]
fn unregistering_registrants_only_holder_tells_others_reservation_released() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::WriteExclusiveRegistrantsOnly)
        .unwrap();
    let fx = s.register(&a(), &params(0xa, 0), false).unwrap();
    assert_eq!(fx.unit_attentions.len(), 1);
    assert_eq!(fx.unit_attentions[0].0.nexus, b());
    assert_eq!(fx.unit_attentions[0].1, RESERVATIONS_RELEASED);
}

#[test]
fn all_registrants_reservation_survives_until_last_registrant_leaves() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::ExclusiveAccessAllRegistrants)
        .unwrap();
    s.register(&a(), &params(0xa, 0), false).unwrap();
    assert!(s.reservation.is_some());
    s.register(&b(), &params(0xb, 0), false).unwrap();
    assert_eq!(s.reservation, None);
}

#[test]
fn spec_i_pt_registers_the_listed_initiators_on_the_same_port() {
    let mut s = PrState::default();
    let mut p = params(0, 0x5);
    p.spec_i_pt = true;
    p.transport_ids = vec!["iqn.2026-11.test:b".into()];
    s.register(&a(), &p, false).unwrap();
    assert!(s
        .registration(&ItNexus::new("iqn.2026-11.test:b", 1))
        .is_some());
}

#[test]
fn spec_i_pt_on_register_and_ignore_is_invalid_field_in_parameter_list() {
    let mut s = PrState::default();
    let mut p = params(0, 0x5);
    p.spec_i_pt = true;
    assert_eq!(
        s.register(&a(), &p, true),
        Err(PrError::Sense(Sense::invalid_param_field(20, Some(3))))
    );
}

#[test]
fn all_tg_pt_registration_matches_every_port_of_the_initiator() {
    let mut s = PrState::default();
    let mut p = params(0, 0x5);
    p.all_tg_pt = true;
    s.register(&a(), &p, false).unwrap();
    assert!(s
        .registration(&ItNexus::new("iqn.2026-11.test:a", 9))
        .is_some());
}

#[test]
fn reserve_by_unregistered_nexus_conflicts() {
    let mut s = two_registered();
    assert_eq!(
        s.reserve(&c(), 0, PrType::WriteExclusive),
        Err(PrError::Conflict)
    );
}

#[test]
fn reserve_with_wrong_key_conflicts() {
    let mut s = two_registered();
    assert_eq!(
        s.reserve(&a(), 0xb, PrType::WriteExclusive),
        Err(PrError::Conflict)
    );
}

#[test]
fn reserve_held_by_another_nexus_conflicts() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::ExclusiveAccess).unwrap();
    assert_eq!(
        s.reserve(&b(), 0xb, PrType::ExclusiveAccess),
        Err(PrError::Conflict)
    );
}

#[test]
fn reserve_again_with_same_type_is_good_and_other_type_conflicts() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::ExclusiveAccess).unwrap();
    assert!(s.reserve(&a(), 0xa, PrType::ExclusiveAccess).is_ok());
    assert_eq!(
        s.reserve(&a(), 0xa, PrType::WriteExclusive),
        Err(PrError::Conflict)
    );
}

#[test]
fn reserve_does_not_bump_generation() {
    let mut s = two_registered();
    let g = s.generation;
    s.reserve(&a(), 0xa, PrType::WriteExclusive).unwrap();
    assert_eq!(s.generation, g);
}

#[test]
fn release_with_wrong_type_is_invalid_release() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::ExclusiveAccess).unwrap();
    assert_eq!(
        s.release(&a(), 0xa, PrType::WriteExclusive),
        Err(PrError::Sense(INVALID_RELEASE))
    );
}

#[test]
fn release_by_non_holder_is_good_and_changes_nothing() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::ExclusiveAccess).unwrap();
    s.release(&b(), 0xb, PrType::ExclusiveAccess).unwrap();
    assert!(s.reservation.is_some());
}

#[test]
fn release_of_registrants_only_type_tells_other_registrants() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::ExclusiveAccessRegistrantsOnly)
        .unwrap();
    let fx = s
        .release(&a(), 0xa, PrType::ExclusiveAccessRegistrantsOnly)
        .unwrap();
    assert_eq!(
        fx.unit_attentions,
        vec![(s.registration(&b()).unwrap().clone(), RESERVATIONS_RELEASED)]
    );
}

#[test]
fn clear_removes_everything_and_tells_others_reservations_preempted() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::WriteExclusive).unwrap();
    let fx = s.clear(&a(), 0xa).unwrap();
    assert!(s.registrations.is_empty() && s.reservation.is_none());
    assert_eq!(fx.unit_attentions.len(), 1);
    assert_eq!(fx.unit_attentions[0].1, RESERVATIONS_PREEMPTED);
}

#[test]
fn clear_with_wrong_key_conflicts() {
    let mut s = two_registered();
    assert_eq!(s.clear(&a(), 0xb), Err(PrError::Conflict));
}

#[test]
fn preempt_holder_moves_reservation_and_removes_its_registration() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::ExclusiveAccess).unwrap();
    let fx = s
        .preempt(&b(), 0xb, 0xa, PrType::ExclusiveAccess, false)
        .unwrap();
    assert!(s.registration(&a()).is_none());
    assert_eq!(s.reservation.as_ref().unwrap().holder, b());
    assert_eq!(fx.unit_attentions[0].1, REGISTRATIONS_PREEMPTED);
    assert_eq!(fx.unit_attentions[0].0.nexus, a());
}

#[test]
fn preempt_without_reservation_removes_matching_registrations() {
    let mut s = two_registered();
    s.preempt(&b(), 0xb, 0xa, PrType::WriteExclusive, false)
        .unwrap();
    assert!(s.registration(&a()).is_none());
    assert!(s.reservation.is_none());
}

#[test]
fn preempt_of_unknown_key_conflicts() {
    let mut s = two_registered();
    assert_eq!(
        s.preempt(&b(), 0xb, 0x99, PrType::WriteExclusive, false),
        Err(PrError::Conflict)
    );
}

#[test]
fn preempt_with_zero_key_and_no_all_registrants_reservation_is_invalid_field() {
    let mut s = two_registered();
    assert_eq!(
        s.preempt(&b(), 0xb, 0, PrType::WriteExclusive, false),
        Err(PrError::Sense(Sense::invalid_param_field(8, None)))
    );
}

#[test]
fn preempt_zero_key_under_all_registrants_removes_everyone_else() {
    let mut s = two_registered();
    s.register(&c(), &params(0, 0xc), false).unwrap();
    s.reserve(&a(), 0xa, PrType::WriteExclusiveAllRegistrants)
        .unwrap();
    s.preempt(&b(), 0xb, 0, PrType::ExclusiveAccess, false)
        .unwrap();
    assert_eq!(s.registrations.len(), 1);
    assert_eq!(s.reservation.as_ref().unwrap().ty, PrType::ExclusiveAccess);
}

#[test]
fn preempt_and_abort_names_the_nexuses_to_abort() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::WriteExclusive).unwrap();
    let fx = s
        .preempt(&b(), 0xb, 0xa, PrType::WriteExclusive, true)
        .unwrap();
    assert_eq!(fx.abort.len(), 1);
    assert_eq!(fx.abort[0].nexus, a());
}

#[test]
fn register_and_move_hands_reservation_to_destination() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::WriteExclusive).unwrap();
    s.register_and_move(&a(), &params(0xa, 0xcc), &c(), true)
        .unwrap();
    assert_eq!(s.reservation.as_ref().unwrap().holder, c());
    assert_eq!(s.registration(&c()).unwrap().key, 0xcc);
    assert!(s.registration(&a()).is_none());
}

#[test]
fn register_and_move_to_the_same_nexus_is_invalid_field() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::WriteExclusive).unwrap();
    assert!(matches!(
        s.register_and_move(&a(), &params(0xa, 0xcc), &a(), false),
        Err(PrError::Sense(_))
    ));
}

#[test]
fn register_and_move_without_reservation_conflicts() {
    let mut s = two_registered();
    assert_eq!(
        s.register_and_move(&a(), &params(0xa, 0xcc), &c(), false),
        Err(PrError::Conflict)
    );
}

#[test]
fn register_and_move_by_unregistered_nexus_conflicts() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::WriteExclusive).unwrap();
    assert_eq!(
        s.register_and_move(&c(), &params(0, 0xcc), &b(), false),
        Err(PrError::Conflict)
    );
}

/// SPC-4 table 62 for reads and writes, registered and unregistered.
#[test]
fn access_rules_for_every_type() {
    // (type, reg read, reg write, unreg read, unreg write) for a non-holder.
    let table = [
        (PrType::WriteExclusive, true, false, true, false),
        (PrType::ExclusiveAccess, false, false, false, false),
        (
            PrType::WriteExclusiveRegistrantsOnly,
            true,
            true,
            true,
            false,
        ),
        (
            PrType::ExclusiveAccessRegistrantsOnly,
            true,
            true,
            false,
            false,
        ),
        (
            PrType::WriteExclusiveAllRegistrants,
            true,
            true,
            true,
            false,
        ),
        (
            PrType::ExclusiveAccessAllRegistrants,
            true,
            true,
            false,
            false,
        ),
    ];
    for (ty, rr, rw, ur, uw) in table {
        let mut s = two_registered();
        s.reserve(&a(), 0xa, ty).unwrap();
        assert!(s.allowed(&a(), Access::Write), "{ty:?}: holder writes");
        assert_eq!(
            s.allowed(&b(), Access::Read),
            rr,
            "{ty:?}: registrant reads"
        );
        assert_eq!(
            s.allowed(&b(), Access::Write),
            rw,
            "{ty:?}: registrant writes"
        );
        assert_eq!(
            s.allowed(&c(), Access::Read),
            ur,
            "{ty:?}: unregistered reads"
        );
        assert_eq!(
            s.allowed(&c(), Access::Write),
            uw,
            "{ty:?}: unregistered writes"
        );
        assert!(s.allowed(&c(), Access::Allowed));
    }
    assert_eq!(ALL_TYPES.len(), table.len());
}

#[test]
fn legacy_reserve_excludes_other_nexuses_until_released() {
    let mut s = PrState::default();
    s.legacy_reserve(&a()).unwrap();
    assert!(!s.allowed(&b(), Access::Read));
    assert_eq!(s.legacy_reserve(&b()), Err(PrError::Conflict));
    s.legacy_release(&a()).unwrap();
    assert!(s.allowed(&b(), Access::Write));
}

#[test]
fn legacy_reserve_under_persistent_reservations_is_a_no_op_for_registrants() {
    let mut s = two_registered();
    assert!(s.legacy_reserve(&a()).is_ok());
    assert!(s.legacy.is_none());
    assert_eq!(s.legacy_reserve(&c()), Err(PrError::Conflict));
}

#[test]
fn lun_reset_keeps_registrations_and_drops_legacy_reservation() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::WriteExclusive).unwrap();
    s.lun_reset();
    assert_eq!(s.registrations.len(), 2);
    assert!(s.reservation.is_some());
}

#[test]
fn read_keys_lists_generation_and_keys() {
    let s = two_registered();
    assert_eq!(
        s.read_keys(),
        vec![0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0xb]
    );
}

#[test]
fn read_reservation_reports_holder_key_and_type() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::ExclusiveAccess).unwrap();
    assert_eq!(
        s.read_reservation(),
        vec![0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0xa, 0, 0, 0, 0, 0, 0x03, 0, 0]
    );
}

#[test]
fn report_capabilities_claims_what_is_implemented() {
    let s = PrState::default();
    assert_eq!(
        s.report_capabilities(),
        vec![0, 8, 0x1d, 0x80, 0xea, 0x01, 0, 0]
    );
}

#[test]
fn read_full_status_carries_transport_ids_and_holder() {
    let mut s = two_registered();
    s.reserve(&a(), 0xa, PrType::WriteExclusive).unwrap();
    let d = s.read_full_status();
    // First descriptor at byte 8: key 0xa, R_HOLDER, type 1, port 1.
    assert_eq!(&d[8..16], &0xau64.to_be_bytes());
    assert_eq!((d[20], d[21]), (0x01, 0x01));
    assert_eq!(&d[26..28], &[0, 1]);
    let tid_len = u32::from_be_bytes(d[28..32].try_into().unwrap()) as usize;
    let (name, used) = parse_transport_id(&d[32..32 + tid_len]).unwrap();
    assert_eq!(name, "iqn.2026-11.test:a");
    assert_eq!(used, tid_len);
}

#[test]
fn basic_parameter_list_must_be_24_bytes() {
    assert_eq!(
        parse_prout(ProutAction::Register, &[0; 23]),
        Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
    );
    assert_eq!(
        parse_prout(ProutAction::Reserve, &[0; 28]),
        Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
    );
}

#[test]
fn spec_i_pt_parameter_list_carries_transport_ids() {
    let mut p = vec![0u8; 24];
    p[15] = 0x5; // SA key
    p[20] = 0x08; // SPEC_I_PT
    let tid = encode_transport_id("iqn.2026-11.test:b");
    p.extend_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    let out = parse_prout(ProutAction::Register, &p).unwrap();
    assert_eq!(out.transport_ids, vec!["iqn.2026-11.test:b".to_string()]);
}

#[test]
fn transport_id_with_isid_format_keeps_only_the_name() {
    let mut t = vec![0x45, 0, 0, 32];
    let mut name = b"iqn.2026-11.test:x,i,0x123456789abc".to_vec();
    name.resize(32, 0);
    t.extend_from_slice(&name);
    assert_eq!(parse_transport_id(&t).unwrap().0, "iqn.2026-11.test:x");
}

#[test]
fn non_iscsi_transport_id_is_unsupported() {
    let t = [
        0x06, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(parse_transport_id(&t), Err(TransportIdError::Unsupported));
}

#[test]
fn scope_other_than_lu_is_invalid_field_in_cdb() {
    assert_eq!(scope_type(0x13), Err(Sense::invalid_cdb_field(2, Some(7))));
    assert_eq!(scope_type(0x02), Err(Sense::invalid_cdb_field(2, Some(3))));
    assert_eq!(scope_type(0x03), Ok(PrType::ExclusiveAccess));
}

#[test]
fn clear_turns_aptpl_off() {
    let mut s = PrState::default();
    let mut p = params(0, 0xa);
    p.aptpl = true;
    s.register(&a(), &p, false).unwrap();
    assert!(s.aptpl);
    s.clear(&a(), 0xa).unwrap();
    assert!(!s.aptpl);
}

#[test]
fn service_action_codes_are_those_of_spc4_table_214() {
    let codes = [
        (0x00, ProutAction::Register),
        (0x01, ProutAction::Reserve),
        (0x02, ProutAction::Release),
        (0x03, ProutAction::Clear),
        (0x04, ProutAction::Preempt),
        (0x05, ProutAction::PreemptAndAbort),
        (0x06, ProutAction::RegisterAndIgnoreExistingKey),
        (0x07, ProutAction::RegisterAndMove),
    ];
    for (code, action) in codes {
        assert_eq!(ProutAction::try_from(code), Ok(action));
        assert_eq!(action as u8, code);
    }
}

#[test]
fn reserved_service_action_codes_are_unknown() {
    for code in 0x08..=0xff {
        assert_eq!(ProutAction::try_from(code), Err(UnknownProutAction(code)));
    }
}

#[test]
fn header_of_a_register_list_reads_keys_and_flags() {
    let p = [
        0, 0, 0, 0, 0, 0, 0, 0x0a, // RESERVATION KEY
        0, 0, 0, 0, 0, 0, 0, 0x0b, // SERVICE ACTION RESERVATION KEY
        0, 0, 0, 0,    // obsolete
        0x0d, // SPEC_I_PT, ALL_TG_PT, APTPL
        0, 0, 0, // reserved, obsolete
    ];
    let out = parse_prout_header(ProutAction::Register, &p).unwrap();
    assert_eq!((out.key, out.sa_key), (0x0a, 0x0b));
    assert!(out.spec_i_pt && out.all_tg_pt && out.aptpl);
}

#[test]
fn header_ignores_all_tg_pt_and_aptpl_of_a_reserve_list() {
    let mut p = [0u8; 24];
    p[20] = 0x05; // ALL_TG_PT, APTPL
    let out = parse_prout_header(ProutAction::Reserve, &p).unwrap();
    assert!(!out.all_tg_pt && !out.aptpl);
}

#[test]
fn header_of_a_register_and_move_list_reads_unreg_aptpl_and_port() {
    let mut p = [0u8; 24];
    p[17] = 0x03; // UNREG, APTPL
    p[18..20].copy_from_slice(&[0x00, 0x02]); // RELATIVE TARGET PORT IDENTIFIER
    p[20..24].copy_from_slice(&[0, 0, 0, 24]); // TRANSPORTID PARAMETER DATA LENGTH
    let out = parse_prout_header(ProutAction::RegisterAndMove, &p).unwrap();
    assert!(out.unreg && out.aptpl);
    assert_eq!(out.move_port, 2);
    assert_eq!(out.move_initiator, None);
}

#[test]
fn header_refuses_only_a_list_shorter_than_24_bytes() {
    assert_eq!(
        parse_prout_header(ProutAction::Release, &[0; 23]),
        Err(Sense::PARAMETER_LIST_LENGTH_ERROR)
    );
    // 28 bytes: too long for parse_prout, the header is there.
    assert!(parse_prout_header(ProutAction::Release, &[0; 28]).is_ok());
}
