// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! PERSISTENT RESERVE IN/OUT (SPC-4 6.15, 6.16) and RESERVE/RELEASE (6)
//! and (10) (SPC-2 7.21, 7.22): CDB and parameter handling around the state
//! machine in `pr`, APTPL saving, and delivery of the effects.

use log::error;

use super::command::{Ctx, Failure, Outcome, Response};
use super::lu::{it_nexus, LogicalUnit};
use super::pr::codec::scope_type;
use super::pr::{self, ItNexus, PrError, ProutAction, INSUFFICIENT_REGISTRATION_RESOURCES};
use super::sense::{Sense, Status};

/// Longest PERSISTENT RESERVE OUT parameter list we accept: the basic 24
/// bytes plus TransportIDs for SPEC_I_PT (each at most 228 bytes).
const MAX_PARAM_LEN: usize = 64 * 1024;

fn conflict() -> Failure {
    Failure::Status(Status::ReservationConflict)
}

/// Reservations are not served on this logical unit (`share-rw`): the
/// commands are refused as unsupported (SPC-4 4.5.2, invalid command
/// operation code), so that no initiator relies on a reservation another
/// process sharing the backstore would not see.
fn unsupported(lu: &LogicalUnit) -> Result<(), Failure> {
    if lu.reservations_enabled() {
        Ok(())
    } else {
        Err(Failure::Sense(Sense::INVALID_COMMAND_OPERATION_CODE))
    }
}

fn good(data: Vec<u8>) -> Result<Outcome, Failure> {
    Ok(Outcome::Done(Response::good(data)))
}

impl From<PrError> for Failure {
    fn from(e: PrError) -> Failure {
        match e {
            PrError::Conflict => conflict(),
            PrError::Sense(s) => Failure::Sense(s),
        }
    }
}

pub(crate) fn persistent_reserve_in(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    unsupported(lu)?;
    let it = it_nexus(ctx.nexus);
    let alloc = usize::from(ctx.cdb.be16(7));
    let st = lu.pr_lock();
    if st.legacy_conflict(&it) {
        return Err(conflict());
    }
    let mut d = match ctx.cdb.service_action() {
        0 => st.read_keys(),
        1 => st.read_reservation(),
        2 => {
            let mut d = st.report_capabilities();
            if lu.pr_file().is_none() {
                d[2] &= !0x01; // PTPL_C: nowhere to persist to
            }
            d
        }
        3 => st.read_full_status(),
        _ => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
    };
    d.truncate(alloc);
    good(d)
}

pub(crate) fn persistent_reserve_out(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    unsupported(lu)?;
    let it = it_nexus(ctx.nexus);
    // The opcode table has an entry for each service action ProutAction
    // knows: no other reaches here.
    let sa = ProutAction::try_from(ctx.cdb.service_action() as u8)
        .map_err(|_| Sense::invalid_cdb_field(1, Some(4)))?;
    let len = ctx.cdb.be32(5) as usize;
    if len > MAX_PARAM_LEN || ctx.data_out.len() < len {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
    }
    let mut p = vec![0u8; len];
    ctx.data_out
        .read_at(0, &mut p)
        .map_err(|_| Sense::PARAMETER_LIST_LENGTH_ERROR)?;
    let params = pr::parse_prout(sa, &p)?;
    if params.aptpl && lu.pr_file().is_none() {
        return Err(Sense::invalid_param_field(20, Some(0)).into());
    }

    let mut st = lu.pr_lock();
    if st.legacy_conflict(&it) {
        return Err(conflict());
    }
    let before = st.clone();
    let fx = match sa {
        ProutAction::Register => st.register(&it, &params, false),
        ProutAction::RegisterAndIgnoreExistingKey => st.register(&it, &params, true),
        ProutAction::Reserve => scope_type(ctx.cdb.byte(2))
            .map_err(PrError::Sense)
            .and_then(|ty| st.reserve(&it, params.key, ty)),
        ProutAction::Release => scope_type(ctx.cdb.byte(2))
            .map_err(PrError::Sense)
            .and_then(|ty| st.release(&it, params.key, ty)),
        ProutAction::Clear => st.clear(&it, params.key),
        ProutAction::Preempt | ProutAction::PreemptAndAbort => scope_type(ctx.cdb.byte(2))
            .map_err(PrError::Sense)
            .and_then(|ty| {
                st.preempt(
                    &it,
                    params.key,
                    params.sa_key,
                    ty,
                    sa == ProutAction::PreemptAndAbort,
                )
            }),
        ProutAction::RegisterAndMove => {
            let dest = ItNexus::new(
                params.move_initiator.as_deref().unwrap_or_default(),
                params.move_port,
            );
            st.register_and_move(&it, &params, &dest, params.unreg)
        }
    }?;

    // APTPL: the new state is on disk before the command completes.
    if (st.aptpl || before.aptpl) && *st != before {
        if let Some(path) = lu.pr_file() {
            if let Err(e) = pr::save(path, lu.identity().naa, &st) {
                error!("{}", crate::error_chain(&e));
                *st = before;
                return Err(INSUFFICIENT_REGISTRATION_RESOURCES.into());
            }
        }
    }
    lu.pr_changed(&st);
    drop(st);
    lu.apply_effects(fx);
    good(Vec::new())
}

fn legacy(lu: &LogicalUnit, ctx: &mut Ctx, reserve: bool) -> Result<Outcome, Failure> {
    let it = it_nexus(ctx.nexus);
    let mut st = lu.pr_lock();
    if reserve {
        st.legacy_reserve(&it)?;
    } else {
        st.legacy_release(&it)?;
    }
    lu.pr_changed(&st);
    good(Vec::new())
}

/// The 10-byte forms: third-party reservations (3RDPTY, LONGID) are not
/// supported (SPC-2 7.21.2).
fn check_third_party(ctx: &Ctx) -> Result<(), Failure> {
    if ctx.cdb.bit(1, 4) {
        return Err(Sense::invalid_cdb_field(1, Some(4)).into());
    }
    if ctx.cdb.bit(1, 1) {
        return Err(Sense::invalid_cdb_field(1, Some(1)).into());
    }
    Ok(())
}

pub(crate) fn reserve6(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    unsupported(lu)?;
    legacy(lu, ctx, true)
}

pub(crate) fn release6(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    unsupported(lu)?;
    legacy(lu, ctx, false)
}

pub(crate) fn reserve10(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    unsupported(lu)?;
    check_third_party(ctx)?;
    legacy(lu, ctx, true)
}

pub(crate) fn release10(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    unsupported(lu)?;
    check_third_party(ctx)?;
    legacy(lu, ctx, false)
}
