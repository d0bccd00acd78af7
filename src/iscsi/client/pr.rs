// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a nexus holds at the target (persistent reservations), to restore
//! after a session reinstatement.

use crate::scsi::pr::codec::BASIC_PARAM_LEN;
use crate::scsi::pr::{parse_prout_header, ProutAction};

/// What this nexus holds at the target, from the PR OUT commands that
/// succeeded through the session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrMemory {
    pub lun: [u8; 8],
    pub key: Option<u64>,
    pub reservation: Option<u8>,
}

impl PrMemory {
    /// Account for a PERSISTENT RESERVE OUT that completed with GOOD.
    pub fn observe(&mut self, lun: [u8; 8], cdb: &[u8], param: &[u8]) {
        if cdb.first() != Some(&0x5f) || param.len() < BASIC_PARAM_LEN {
            return;
        }
        self.lun = lun;
        let sa = cdb.get(1).map_or(0xff, |b| b & 0x1f);
        let Ok(sa) = ProutAction::try_from(sa) else {
            return;
        };
        // The fields before any TransportID: the target checked the rest.
        let Ok(p) = parse_prout_header(sa, param) else {
            return;
        };
        let ty = cdb.get(2).map_or(0, |b| b & 0x0f);
        match sa {
            ProutAction::Register | ProutAction::RegisterAndIgnoreExistingKey => {
                self.key = (p.sa_key != 0).then_some(p.sa_key);
                if p.sa_key == 0 {
                    self.reservation = None;
                }
            }
            ProutAction::Reserve | ProutAction::Preempt | ProutAction::PreemptAndAbort => {
                self.reservation = Some(ty)
            }
            ProutAction::Release => self.reservation = None,
            ProutAction::Clear => {
                *self = PrMemory {
                    lun,
                    ..PrMemory::default()
                }
            }
            // REGISTER AND MOVE hands the reservation to another nexus.
            ProutAction::RegisterAndMove => {
                self.reservation = None;
                if p.unreg {
                    self.key = None;
                }
            }
        }
    }

    /// The commands that re-establish this state on a new session.
    pub fn restore(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let Some(key) = self.key else {
            return Vec::new();
        };
        let param = |rk: u64, sark: u64| {
            let mut p = rk.to_be_bytes().to_vec();
            p.extend_from_slice(&sark.to_be_bytes());
            p.extend_from_slice(&[0; 8]);
            p
        };
        let cdb = |sa: ProutAction, ty: u8| vec![0x5f, sa as u8, ty, 0, 0, 0, 0, 0, 24, 0];
        let mut v = vec![(
            cdb(ProutAction::RegisterAndIgnoreExistingKey, 0),
            param(0, key),
        )];
        if let Some(t) = self.reservation {
            v.push((cdb(ProutAction::Preempt, t), param(key, key)));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LUN: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

    fn param(rk: u64, sark: u64) -> Vec<u8> {
        let mut p = rk.to_be_bytes().to_vec();
        p.extend_from_slice(&sark.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        p
    }

    #[test]
    fn register_and_reserve_are_remembered_and_restored() {
        let mut m = PrMemory::default();
        m.observe(
            LUN,
            &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0],
            &param(0, 0xabc),
        );
        m.observe(
            LUN,
            &[0x5f, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0],
            &param(0xabc, 0),
        );
        assert_eq!((m.key, m.reservation), (Some(0xabc), Some(3)));
        let r = m.restore();
        // REGISTER AND IGNORE EXISTING KEY with the key, then PREEMPT the
        // stale registration (same key) with the same type.
        assert_eq!(r[0].0[1], 0x06);
        assert_eq!(&r[0].1[8..16], &0xabcu64.to_be_bytes());
        assert_eq!((r[1].0[1], r[1].0[2]), (0x04, 0x03));
        assert_eq!(&r[1].1[0..8], &0xabcu64.to_be_bytes());
        assert_eq!(&r[1].1[8..16], &0xabcu64.to_be_bytes());
    }

    #[test]
    fn release_clear_and_unregister_forget() {
        let mut m = PrMemory::default();
        m.observe(LUN, &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], &param(0, 7));
        m.observe(LUN, &[0x5f, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0], &param(7, 0));
        m.observe(LUN, &[0x5f, 0x02, 0x01, 0, 0, 0, 0, 0, 24, 0], &param(7, 0));
        assert_eq!((m.key, m.reservation), (Some(7), None));
        assert_eq!(m.restore().len(), 1);
        m.observe(LUN, &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], &param(7, 0));
        assert_eq!(m.key, None);
        assert!(m.restore().is_empty());
        m.observe(LUN, &[0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], &param(0, 9));
        m.observe(LUN, &[0x5f, 0x03, 0, 0, 0, 0, 0, 0, 24, 0], &param(9, 0));
        assert_eq!(
            m,
            PrMemory {
                lun: LUN,
                ..PrMemory::default()
            }
        );
    }

    /// REGISTER AND MOVE parameter list (SPC-4 table 220): reservation key,
    /// SA key, byte 17 `flags` (UNREG is bit 1), relative target port 2,
    /// then a 24-byte iSCSI TransportID for "iqn.2026-11.test:b".
    fn move_param(key: u64, flags: u8) -> Vec<u8> {
        let mut p = param(key, 0);
        p[17] = flags;
        p[18..20].copy_from_slice(&[0, 2]);
        p[20..24].copy_from_slice(&[0, 0, 0, 24]);
        p.extend_from_slice(&[0x05, 0, 0, 20]);
        let mut name = b"iqn.2026-11.test:b".to_vec();
        name.resize(20, 0);
        p.extend_from_slice(&name);
        p
    }

    fn registered_and_reserved() -> PrMemory {
        let mut m = PrMemory::default();
        m.observe(LUN, &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], &param(0, 7));
        m.observe(LUN, &[0x5f, 0x01, 0x01, 0, 0, 0, 0, 0, 24, 0], &param(7, 0));
        m
    }

    #[test]
    fn register_and_move_keeps_the_key_and_drops_the_reservation() {
        let mut m = registered_and_reserved();
        m.observe(
            LUN,
            &[0x5f, 0x07, 0x01, 0, 0, 0, 0, 0, 48, 0],
            &move_param(7, 0x00),
        );
        assert_eq!((m.key, m.reservation), (Some(7), None));
    }

    #[test]
    fn register_and_move_with_unreg_forgets_the_key() {
        let mut m = registered_and_reserved();
        m.observe(
            LUN,
            &[0x5f, 0x07, 0x01, 0, 0, 0, 0, 0, 48, 0],
            &move_param(7, 0x02),
        );
        assert_eq!((m.key, m.reservation), (None, None));
    }

    #[test]
    fn preempt_and_abort_takes_the_reservation() {
        let mut m = PrMemory::default();
        m.observe(LUN, &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 24, 0], &param(0, 7));
        m.observe(LUN, &[0x5f, 0x05, 0x03, 0, 0, 0, 0, 0, 24, 0], &param(7, 9));
        assert_eq!((m.key, m.reservation), (Some(7), Some(3)));
    }

    #[test]
    fn a_short_parameter_list_or_an_unknown_service_action_changes_nothing() {
        let mut m = registered_and_reserved();
        // RELEASE with a 23-byte list.
        m.observe(LUN, &[0x5f, 0x02, 0x01, 0, 0, 0, 0, 0, 23, 0], &[0; 23]);
        // Service action 08h, not in SPC-4 table 214.
        m.observe(LUN, &[0x5f, 0x08, 0, 0, 0, 0, 0, 0, 24, 0], &param(7, 0));
        assert_eq!((m.key, m.reservation), (Some(7), Some(1)));
    }

    #[test]
    fn a_register_list_with_transport_ids_is_read_up_to_them() {
        // REGISTER with SPEC_I_PT (byte 20 bit 3) and a TransportID of a
        // protocol other than iSCSI (Fibre Channel, 0h), which the target took.
        let mut p = param(0, 0x11);
        p[20] = 0x08;
        p.extend_from_slice(&[0, 0, 0, 24]);
        p.extend_from_slice(&[0x00; 24]);
        let mut m = PrMemory::default();
        m.observe(LUN, &[0x5f, 0x00, 0, 0, 0, 0, 0, 0, 52, 0], &p);
        assert_eq!(m.key, Some(0x11));
    }

    #[test]
    fn other_commands_are_ignored() {
        let mut m = PrMemory::default();
        m.observe(LUN, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512]);
        assert_eq!(m, PrMemory::default());
    }
}
