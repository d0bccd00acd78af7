// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What a nexus holds at the target (persistent reservations), to restore
//! after a session reinstatement.

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
        if cdb.first() != Some(&0x5f) || param.len() < 24 {
            return;
        }
        let sa_key = u64::from_be_bytes(param[8..16].try_into().unwrap_or_default());
        let ty = cdb.get(2).map_or(0, |b| b & 0x0f);
        self.lun = lun;
        match cdb.get(1).map_or(0xff, |b| b & 0x1f) {
            // REGISTER, REGISTER AND IGNORE EXISTING KEY
            0x00 | 0x06 => {
                self.key = (sa_key != 0).then_some(sa_key);
                if sa_key == 0 {
                    self.reservation = None;
                }
            }
            0x01 | 0x04 | 0x05 => self.reservation = Some(ty),
            0x02 => self.reservation = None,
            0x03 => {
                *self = PrMemory {
                    lun,
                    ..PrMemory::default()
                }
            }
            // REGISTER AND MOVE hands the reservation to another nexus.
            0x07 => {
                self.reservation = None;
                if param.get(17).is_some_and(|b| b & 0x02 != 0) {
                    self.key = None;
                }
            }
            _ => {}
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
        let mut v = vec![(vec![0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], param(0, key))];
        if let Some(t) = self.reservation {
            v.push((vec![0x5f, 0x04, t, 0, 0, 0, 0, 0, 24, 0], param(key, key)));
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

    #[test]
    fn other_commands_are_ignored() {
        let mut m = PrMemory::default();
        m.observe(LUN, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0; 512]);
        assert_eq!(m, PrMemory::default());
    }
}
