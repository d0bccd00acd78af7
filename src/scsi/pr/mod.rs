// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SCSI-3 persistent reservations (SPC-4 5.13, 6.15, 6.16) and SPC-2
//! RESERVE/RELEASE with the SPC-3 compatible reservation handling (CRH).
//!
//! [`PrState`] is the state of one logical unit: registrations, the
//! reservation, PRgeneration and APTPL. Its methods implement the service
//! actions and the command access rules; they take I_T nexuses and decoded
//! parameters and return the effects (unit attentions, nexuses whose
//! commands must be aborted), so they are tested without any I/O.

pub mod codec;
pub(crate) mod persist;
#[cfg(test)]
mod tests;

pub use codec::{
    parse_prout, parse_prout_header, ProutAction, ProutParams, TransportIdError, UnknownProutAction,
};
pub use persist::{load, save, PersistError};

use super::sense::Sense;

/// An I_T nexus as persistent reservations know it: the initiator port name
/// (an iSCSI name, compared case-insensitively) and the relative target port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItNexus {
    pub initiator: String,
    pub port: u16,
}

impl ItNexus {
    pub fn new(initiator: &str, port: u16) -> ItNexus {
        ItNexus {
            initiator: initiator.to_ascii_lowercase(),
            port,
        }
    }
}

/// Persistent reservation types (SPC-4 6.16.3, table 216).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub fn from_u8(v: u8) -> Option<PrType> {
        Some(match v {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// Every registrant is a reservation holder (types 7 and 8).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants (not only the holder) get access (types 5-8).
    fn registrants_get_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Reads by non-holders conflict too (the "Exclusive Access" types).
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// How a command is treated in the presence of a reservation (SPC-4
/// 5.13.1 table 62, SBC-3 4.18 table 13, condensed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Never conflicts (INQUIRY, REPORT LUNS, PERSISTENT RESERVE IN/OUT, ...).
    Allowed,
    /// Reads the medium or its state: conflicts under Exclusive Access types.
    Read,
    /// Changes the medium or its state: conflicts under every type.
    Write,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub nexus: ItNexus,
    pub key: u64,
    /// Registered through every target port (ALL_TG_PT).
    pub all_tg_pt: bool,
}

impl Registration {
    fn matches(&self, n: &ItNexus) -> bool {
        self.nexus.initiator == n.initiator && (self.all_tg_pt || self.nexus.port == n.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The holder; for all-registrants types, the registration that created it
    /// (every registrant holds it).
    pub holder: ItNexus,
    pub ty: PrType,
}

/// Why a PR command or a command under a reservation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrError {
    Conflict,
    Sense(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> PrError {
        PrError::Sense(s)
    }
}

pub const RESERVATIONS_PREEMPTED: Sense = Sense::RESERVATIONS_PREEMPTED;
pub const RESERVATIONS_RELEASED: Sense = Sense::RESERVATIONS_RELEASED;
pub const REGISTRATIONS_PREEMPTED: Sense = Sense::REGISTRATIONS_PREEMPTED;
pub const INVALID_RELEASE: Sense = Sense::INVALID_RELEASE_OF_PERSISTENT_RESERVATION;
/// Also what we answer when the APTPL state cannot be written.
pub const INSUFFICIENT_REGISTRATION_RESOURCES: Sense = Sense::INSUFFICIENT_REGISTRATION_RESOURCES;

/// Most registrations per logical unit (bounds memory and READ FULL STATUS).
pub const MAX_REGISTRATIONS: usize = 256;

/// What a successful service action asks the logical unit to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Unit attentions for the I_T nexuses these registrations match.
    pub unit_attentions: Vec<(Registration, Sense)>,
    /// Nexuses whose commands must be aborted (PREEMPT AND ABORT).
    pub abort: Vec<Registration>,
}

/// The persistent reservation state of one logical unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrState {
    pub generation: u32,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// Activate Persist Through Power Loss: the state is saved to disk.
    pub aptpl: bool,
    /// SPC-2 RESERVE(6)/(10) reservation holder.
    pub legacy: Option<ItNexus>,
}

impl PrState {
    pub fn registration(&self, n: &ItNexus) -> Option<&Registration> {
        self.registrations.iter().find(|r| r.matches(n))
    }

    fn is_holder(&self, n: &ItNexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.ty.all_registrants() => self.registration(n).is_some(),
            Some(r) => self
                .registration(n)
                .is_some_and(|reg| reg.matches(&r.holder) || reg.nexus == r.holder),
        }
    }

    /// A state change that PRgeneration counts. With no registration left
    /// there is nothing to persist: APTPL turns off (the state file goes).
    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.registrations.is_empty() {
            self.aptpl = false;
        }
    }

    /// Whether a command of class `access` from `n` may run (else
    /// RESERVATION CONFLICT).
    pub fn allowed(&self, n: &ItNexus, access: Access) -> bool {
        if access == Access::Allowed {
            return true;
        }
        if let Some(holder) = &self.legacy {
            return holder == n;
        }
        let Some(r) = &self.reservation else {
            return true;
        };
        if self.is_holder(n) {
            return true;
        }
        let registered = self.registration(n).is_some();
        match access {
            Access::Allowed => true,
            Access::Read if !r.ty.exclusive_access() => true,
            Access::Read | Access::Write => r.ty.registrants_get_access() && registered,
        }
    }

    /// PERSISTENT RESERVE IN/OUT while another nexus holds an SPC-2
    /// reservation conflict (SPC-4 5.13.3... 6.15, 6.16).
    pub fn legacy_conflict(&self, n: &ItNexus) -> bool {
        self.legacy.as_ref().is_some_and(|h| h != n)
    }

    /// REGISTER (SA 00h) and REGISTER AND IGNORE EXISTING KEY (SA 06h),
    /// SPC-4 5.13.5 and 5.13.6.
    pub fn register(
        &mut self,
        n: &ItNexus,
        p: &ProutParams,
        ignore_existing: bool,
    ) -> Result<Effects, PrError> {
        if ignore_existing && p.spec_i_pt {
            return Err(Sense::invalid_param_field(20, Some(3)).into());
        }
        let mut fx = Effects::default();
        match self.registration(n).cloned() {
            None => {
                if !ignore_existing && p.key != 0 {
                    return Err(PrError::Conflict);
                }
                if p.sa_key == 0 {
                    // Unregistering an unregistered nexus: nothing to do.
                    return Ok(fx);
                }
                let mut new = vec![Registration {
                    nexus: n.clone(),
                    key: p.sa_key,
                    all_tg_pt: p.all_tg_pt,
                }];
                for initiator in &p.transport_ids {
                    let other = ItNexus::new(initiator, n.port);
                    if new.iter().any(|r| r.matches(&other)) || self.registration(&other).is_some()
                    {
                        // SPC-4 5.13.5: a specified nexus is already registered.
                        return Err(Sense::invalid_param_field(24, None).into());
                    }
                    new.push(Registration {
                        nexus: other,
                        key: p.sa_key,
                        all_tg_pt: p.all_tg_pt,
                    });
                }
                if self.registrations.len() + new.len() > MAX_REGISTRATIONS {
                    return Err(INSUFFICIENT_REGISTRATION_RESOURCES.into());
                }
                self.registrations.extend(new);
            }
            Some(reg) => {
                if !ignore_existing && p.key != reg.key {
                    return Err(PrError::Conflict);
                }
                if p.spec_i_pt {
                    return Err(Sense::invalid_param_field(20, Some(3)).into());
                }
                if p.sa_key == 0 {
                    fx = self.unregister(&reg);
                } else if let Some(r) = self.registrations.iter_mut().find(|r| **r == reg) {
                    r.key = p.sa_key;
                }
            }
        }
        self.aptpl = p.aptpl;
        self.bump();
        Ok(fx)
    }

    /// Remove one registration and release what it held (SPC-4 5.13.11.3).
    fn unregister(&mut self, reg: &Registration) -> Effects {
        let mut fx = Effects::default();
        let was_holder = self.is_holder(&reg.nexus);
        self.registrations.retain(|r| r != reg);
        if let Some(r) = self.reservation.clone() {
            let released = if r.ty.all_registrants() {
                self.registrations.is_empty()
            } else {
                was_holder
            };
            if released {
                self.reservation = None;
                if matches!(
                    r.ty,
                    PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
                ) {
                    for other in &self.registrations {
                        fx.unit_attentions
                            .push((other.clone(), RESERVATIONS_RELEASED));
                    }
                }
            } else if r.ty.all_registrants() && r.holder == reg.nexus {
                // Another registrant keeps the all-registrants reservation.
                if let Some(first) = self.registrations.first() {
                    self.reservation = Some(Reservation {
                        holder: first.nexus.clone(),
                        ty: r.ty,
                    });
                }
            }
        }
        fx
    }

    /// The registration of `n` whose key is `key`, or RESERVATION CONFLICT.
    fn registered_with(&self, n: &ItNexus, key: u64) -> Result<Registration, PrError> {
        match self.registration(n) {
            Some(r) if r.key == key => Ok(r.clone()),
            _ => Err(PrError::Conflict),
        }
    }

    /// RESERVE (SA 01h), SPC-4 5.13.7.
    pub fn reserve(&mut self, n: &ItNexus, key: u64, ty: PrType) -> Result<Effects, PrError> {
        self.registered_with(n, key)?;
        match &self.reservation {
            Some(r) if self.is_holder(n) => {
                if r.ty == ty {
                    Ok(Effects::default())
                } else {
                    Err(PrError::Conflict)
                }
            }
            Some(_) => Err(PrError::Conflict),
            None => {
                self.reservation = Some(Reservation {
                    holder: n.clone(),
                    ty,
                });
                Ok(Effects::default())
            }
        }
    }

    /// RELEASE (SA 02h), SPC-4 5.13.11.2.
    pub fn release(&mut self, n: &ItNexus, key: u64, ty: PrType) -> Result<Effects, PrError> {
        self.registered_with(n, key)?;
        let Some(r) = self.reservation.clone() else {
            return Ok(Effects::default());
        };
        if !self.is_holder(n) {
            return Ok(Effects::default());
        }
        if r.ty != ty {
            return Err(INVALID_RELEASE.into());
        }
        self.reservation = None;
        let mut fx = Effects::default();
        if r.ty.registrants_get_access() {
            for other in self.registrations.iter().filter(|o| !o.matches(n)) {
                fx.unit_attentions
                    .push((other.clone(), RESERVATIONS_RELEASED));
            }
        }
        Ok(fx)
    }

    /// CLEAR (SA 03h), SPC-4 5.13.11.2.3... 6.16.2.
    pub fn clear(&mut self, n: &ItNexus, key: u64) -> Result<Effects, PrError> {
        self.registered_with(n, key)?;
        let mut fx = Effects::default();
        for other in self.registrations.iter().filter(|o| !o.matches(n)) {
            fx.unit_attentions
                .push((other.clone(), RESERVATIONS_PREEMPTED));
        }
        self.registrations.clear();
        self.reservation = None;
        self.bump();
        Ok(fx)
    }

    /// PREEMPT (SA 04h) and PREEMPT AND ABORT (SA 05h), SPC-4 5.13.12.
    pub fn preempt(
        &mut self,
        n: &ItNexus,
        key: u64,
        sa_key: u64,
        ty: PrType,
        abort: bool,
    ) -> Result<Effects, PrError> {
        self.registered_with(n, key)?;
        let mut fx = Effects::default();
        let resv = self.reservation.clone();
        // Which registrations go, and whether the reservation moves to us.
        let (victims, take_reservation): (Vec<Registration>, bool) = match &resv {
            Some(r) if r.ty.all_registrants() && sa_key == 0 => (
                self.registrations
                    .iter()
                    .filter(|o| !o.matches(n))
                    .cloned()
                    .collect(),
                true,
            ),
            Some(r)
                if !r.ty.all_registrants()
                    && self
                        .registration(&r.holder)
                        .is_some_and(|h| h.key == sa_key) =>
            {
                (
                    self.registrations
                        .iter()
                        .filter(|o| o.key == sa_key && !o.matches(n))
                        .cloned()
                        .collect(),
                    true,
                )
            }
            _ => {
                if sa_key == 0 {
                    return Err(Sense::invalid_param_field(8, None).into());
                }
                let v: Vec<Registration> = self
                    .registrations
                    .iter()
                    .filter(|o| o.key == sa_key && !o.matches(n))
                    .cloned()
                    .collect();
                if v.is_empty() {
                    return Err(PrError::Conflict);
                }
                (v, false)
            }
        };
        self.registrations.retain(|r| !victims.contains(r));
        for v in &victims {
            fx.unit_attentions
                .push((v.clone(), REGISTRATIONS_PREEMPTED));
        }
        if take_reservation {
            let old = resv;
            self.reservation = Some(Reservation {
                holder: n.clone(),
                ty,
            });
            // Registrants that stay but see the type change lose their old
            // reservation (SPC-4 5.13.12.2.3: RESERVATIONS RELEASED).
            if old.is_some_and(|o| o.ty != ty) {
                for other in self.registrations.iter().filter(|o| !o.matches(n)) {
                    fx.unit_attentions
                        .push((other.clone(), RESERVATIONS_RELEASED));
                }
            }
        }
        if abort {
            fx.abort = victims;
        }
        self.bump();
        Ok(fx)
    }

    /// REGISTER AND MOVE (SA 07h), SPC-4 5.13.8.
    pub fn register_and_move(
        &mut self,
        n: &ItNexus,
        p: &ProutParams,
        dest: &ItNexus,
        unreg: bool,
    ) -> Result<Effects, PrError> {
        let own = self.registered_with(n, p.key)?;
        let Some(r) = self.reservation.clone() else {
            return Err(PrError::Conflict);
        };
        if r.ty.all_registrants() || !self.is_holder(n) {
            return Err(PrError::Conflict);
        }
        if p.sa_key == 0 {
            return Err(Sense::invalid_param_field(8, None).into());
        }
        if own.matches(dest) {
            // The destination is the source I_T nexus.
            return Err(Sense::invalid_param_field(20, None).into());
        }
        match self.registrations.iter_mut().find(|x| x.matches(dest)) {
            Some(d) => d.key = p.sa_key,
            None => {
                if self.registrations.len() >= MAX_REGISTRATIONS {
                    return Err(INSUFFICIENT_REGISTRATION_RESOURCES.into());
                }
                self.registrations.push(Registration {
                    nexus: dest.clone(),
                    key: p.sa_key,
                    all_tg_pt: false,
                });
            }
        }
        self.reservation = Some(Reservation {
            holder: dest.clone(),
            ty: r.ty,
        });
        if unreg {
            self.registrations.retain(|x| *x != own);
        }
        self.aptpl = p.aptpl;
        self.bump();
        Ok(Effects::default())
    }

    /// RESERVE(6)/(10) (SPC-2 7.21, with SPC-4 5.13.3 CRH: a registered
    /// nexus gets GOOD without effect while persistent reservations exist).
    pub fn legacy_reserve(&mut self, n: &ItNexus) -> Result<(), PrError> {
        if !self.registrations.is_empty() || self.reservation.is_some() {
            return if self.registration(n).is_some() {
                Ok(())
            } else {
                Err(PrError::Conflict)
            };
        }
        match &self.legacy {
            Some(h) if h != n => Err(PrError::Conflict),
            _ => {
                self.legacy = Some(n.clone());
                Ok(())
            }
        }
    }

    /// RELEASE(6)/(10): releases only the caller's own SPC-2 reservation.
    pub fn legacy_release(&mut self, n: &ItNexus) -> Result<(), PrError> {
        if !self.registrations.is_empty() || self.reservation.is_some() {
            return if self.registration(n).is_some() {
                Ok(())
            } else {
                Err(PrError::Conflict)
            };
        }
        if self.legacy.as_ref() == Some(n) {
            self.legacy = None;
        }
        Ok(())
    }

    /// A LOGICAL UNIT RESET releases the SPC-2 reservation; persistent
    /// reservations and registrations stay (SPC-4 5.13.1).
    pub fn lun_reset(&mut self) {
        self.legacy = None;
    }

    /// An I_T nexus loss releases that nexus' SPC-2 reservation.
    pub fn nexus_loss(&mut self, n: &ItNexus) {
        if self.legacy.as_ref() == Some(n) {
            self.legacy = None;
        }
    }
}
