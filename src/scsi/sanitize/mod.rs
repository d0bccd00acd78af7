// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SANITIZE (SBC-4 4.11, 5.28): OVERWRITE and BLOCK ERASE, and EXIT
//! FAILURE MODE. CRYPTOGRAPHIC ERASE is not offered: nothing here encrypts
//! the medium, so there is no key to change.
//!
//! The operation runs on a thread of its own. With IMMED set the command
//! completes as soon as it is checked; with IMMED clear SBC-4 wants the
//! status after the operation, and the queue worker that runs the command
//! waits for it (there is no deferred completion for emulated commands;
//! sg_sanitize sets IMMED unless told --wait, and polls with REQUEST
//! SENSE). While it runs the
//! logical unit answers every command but INQUIRY, REPORT LUNS and REQUEST
//! SENSE with NOT READY, SANITIZE IN PROGRESS and the progress indication;
//! REQUEST SENSE returns the same sense data with GOOD status. An operation
//! that fails leaves the unit in sanitize failure mode: medium access ends
//! with MEDIUM ERROR, SANITIZE COMMAND FAILED until a sanitize operation
//! completes, or, when the failed one allowed it (AUSE), until EXIT FAILURE
//! MODE.
//!
//! What each method does to the backstore:
//! - OVERWRITE: writes the initialization pattern over every block, as
//!   many passes as asked (inverted between passes with INVERT), then
//!   fdatasync. Writes go through the host file system: on a copy-on-write
//!   file system or an SSD, old physical copies may survive; the guarantee
//!   is the logical one, that every block of the LU reads back the pattern.
//! - BLOCK ERASE: deallocates every block: holes punched in a file,
//!   BLKDISCARD on a block device (BLKZEROOUT where discard is refused),
//!   zeros written where neither works. Reads after it return zeros (the
//!   Block Device Characteristics page says WABEREQ 01b: reads succeed).
//!
//! The state lives in memory: if the daemon stops during an operation, the
//! operation is lost, not resumed as SBC-4 would have a device do after a
//! power cycle.

use log::{error, info};

pub(crate) mod state;

use state::{Phase, Sanitizer};

use super::cdb::be16_at;
use super::command::{Ctx, Failure, Outcome, Response};
use super::lu::LogicalUnit;
use super::sense::Sense;
use super::writes::BlockRange;
use crate::backstore::Backstore;

/// Service actions (SBC-4 table 5.28).
const OVERWRITE: u8 = 0x01;
const BLOCK_ERASE: u8 = 0x02;
const EXIT_FAILURE_MODE: u8 = 0x1f;

/// Bytes written or deallocated between two progress updates.
const STEP: u64 = 8 << 20;

/// A sanitize operation's method.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Method {
    Overwrite {
        /// One logical block filled with the initialization pattern.
        block: Vec<u8>,
        passes: u8,
        invert: bool,
    },
    BlockErase,
}

/// SANITIZE (SBC-4 5.28).
pub(crate) fn sanitize(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let immed = ctx.cdb.bit(1, 7);
    let ause = ctx.cdb.bit(1, 5);
    let sa = ctx.cdb.byte(1) & 0x1f;
    let plen = usize::from(ctx.cdb.be16(7));
    // SBC-4 table 5.28: the parameter list length each service action takes.
    let plen_ok = match sa {
        OVERWRITE => plen > 4 && plen < lu.block_size() as usize + 5,
        _ => plen == 0,
    };
    if !plen_ok {
        return Err(Sense::invalid_cdb_field(7, None).into());
    }
    let state = lu.sanitizer();
    let failed_restricted = *state.lock() == Phase::Failed { ause: false };
    let method = match sa {
        EXIT_FAILURE_MODE => {
            // Only an operation that failed with AUSE set may be left this
            // way; with nothing to leave there is nothing to do.
            if failed_restricted {
                return Err(Sense::invalid_cdb_field(1, Some(4)).into());
            }
            state.set(Phase::Idle);
            return Ok(Outcome::Done(Response::good(Vec::new())));
        }
        OVERWRITE => overwrite_parameters(lu, ctx, plen)?,
        BLOCK_ERASE => Method::BlockErase,
        // The opcode table lets no other service action through.
        _ => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
    };
    if failed_restricted && ause {
        // SBC-4 4.11.3: after a failure in restricted completion mode, the
        // unrestricted mode may not be asked for.
        return Err(Sense::invalid_cdb_field(1, Some(5)).into());
    }
    start(lu, method, ause)?;
    if immed {
        return Ok(Outcome::Done(Response::good(Vec::new())));
    }
    if state.wait_done() {
        Ok(Outcome::Done(Response::good(Vec::new())))
    } else {
        Err(Sense::SANITIZE_COMMAND_FAILED.into())
    }
}

/// Check the OVERWRITE parameter list (SBC-4 5.28.3.2) and build the
/// block to write.
fn overwrite_parameters(lu: &LogicalUnit, ctx: &mut Ctx, plen: usize) -> Result<Method, Sense> {
    if ctx.data_out.len() < plen {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let mut p = vec![0u8; plen];
    ctx.data_out
        .read_at(0, &mut p)
        .map_err(|_| Sense::PARAMETER_LIST_LENGTH_ERROR)?;
    let b0 = p.first().copied().unwrap_or(0);
    let invert = b0 & 0x80 != 0;
    if b0 & 0x60 != 0 {
        // TEST: only 00b (no test mode) is offered.
        return Err(Sense::invalid_param_field(0, Some(6)));
    }
    let passes = b0 & 0x1f;
    if passes == 0 {
        // OVERWRITE COUNT 00h is reserved.
        return Err(Sense::invalid_param_field(0, Some(4)));
    }
    let ipl = usize::from(be16_at(&p, 2));
    let bs = lu.block_size() as usize;
    if ipl == 0 || ipl > bs {
        return Err(Sense::invalid_param_field(2, None));
    }
    let pattern = p
        .get(4..4 + ipl)
        .ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?;
    // Each block begins with the pattern's first byte, repeated to fill it.
    let block: Vec<u8> = pattern.iter().copied().cycle().take(bs).collect();
    Ok(Method::Overwrite {
        block,
        passes,
        invert,
    })
}

/// Begin an operation: once no write to the LU is in flight, every new
/// command is refused, then the work goes to a thread of its own.
fn start(lu: &LogicalUnit, method: Method, ause: bool) -> Result<(), Failure> {
    let store = lu.backstore_arc();
    let state = lu.sanitizer_arc();
    let passes = match &method {
        Method::Overwrite { passes, .. } => u64::from(*passes),
        Method::BlockErase => 1,
    };
    let total = store.size().saturating_mul(passes);
    let whole = BlockRange::new(0, lu.blocks());
    lu.writes()
        .exclusive(whole, || state.set(Phase::Running { done: 0, total }))
        .ok_or_else(LogicalUnit::status_busy)?;
    let what = match &method {
        Method::Overwrite { passes, invert, .. } => {
            format!("OVERWRITE, {passes} pass(es), invert {invert}")
        }
        Method::BlockErase => "BLOCK ERASE".to_string(),
    };
    info!("{}: sanitize ({what}) started", store.path().display());
    let spawned = std::thread::Builder::new().name("sanitize".into()).spawn({
        let state = state.clone();
        let store = store.clone();
        move || run(&*store, &state, &method, ause)
    });
    if let Err(e) = spawned {
        error!("{}: cannot start sanitize: {e}", store.path().display());
        state.set(Phase::Failed { ause });
    }
    Ok(())
}

/// The operation itself, on its own thread.
fn run(store: &dyn Backstore, state: &Sanitizer, method: &Method, ause: bool) {
    let size = store.size();
    let mut done = 0u64;
    let mut step = |f: &dyn Fn(u64, u64) -> std::io::Result<()>| -> std::io::Result<()> {
        let mut at = 0u64;
        while at < size {
            let len = (size - at).min(STEP);
            f(at, len)?;
            at += len;
            done = done.saturating_add(len);
            state.advance(done);
        }
        Ok(())
    };
    let result = match method {
        Method::BlockErase => step(&|at, len| {
            store
                .deallocate(at, len)
                .or_else(|_| store.write_zeroes(at, len))
        }),
        Method::Overwrite {
            block,
            passes,
            invert,
        } => {
            let inverted: Vec<u8> = block.iter().map(|b| !b).collect();
            (0..*passes)
                .try_for_each(|pass| {
                    // With INVERT the passes alternate so that the last one
                    // writes the pattern itself (SBC-4 5.28.3.2).
                    let flip = *invert && (passes - 1 - pass) % 2 == 1;
                    let data = if flip { &inverted } else { block };
                    step(&|at, len| store.write_repeated(data, at, len))
                })
                .and_then(|()| store.flush())
        }
    };
    match result {
        Ok(()) => {
            info!("{}: sanitize completed", store.path().display());
            state.set(Phase::Idle);
        }
        Err(e) => {
            error!("{}: sanitize failed: {e}", store.path().display());
            state.set(Phase::Failed { ause });
        }
    }
}
