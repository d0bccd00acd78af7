// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Executing a command on a logical unit: the opcode table's entry, then
//! the checks every command passes in SAM-5/SPC-4's order (unit
//! attention, reserved bits, NACA, ALUA state, sanitize, stopped unit,
//! reservations, write protection), then the entry's handler.
//!
//! It sits above the handlers and the logical unit: lu.rs holds state and
//! knows no command, the handlers change it through its methods, and this
//! module ties the table to both.

use log::trace;

use super::alua;
use super::cdb::Cdb;
use super::command::{Command, Ctx, Failure, Outcome};
use super::lu::LogicalUnit;
use super::opcodes::{self, ALUA_STANDBY_OK, ALUA_UNAVAILABLE_OK, MEDIA, SANITIZE_OK, WRITES};
use super::pr::Access;
use super::sense::{Sense, Status};

impl LogicalUnit {
    /// Execute one command. `luns` are the LUNs of the target it came through.
    pub fn execute(&self, cmd: Command, luns: &[u16]) -> Outcome {
        let cdb = Cdb::new(cmd.cdb);
        let mut ctx = Ctx {
            cdb,
            layout: None,
            nexus: cmd.nexus,
            data_out: cmd.data_out,
            luns,
        };
        match self.dispatch(&mut ctx) {
            Ok(outcome) => outcome,
            Err(failure) => self.failed(failure),
        }
    }

    fn dispatch(&self, ctx: &mut Ctx) -> Result<Outcome, Failure> {
        let info = opcodes::lookup(&ctx.cdb);
        if !info.as_ref().is_ok_and(|i| opcodes::ua_exempt(i)) {
            if let Some(ua) = self.take_ua(ctx.nexus.id) {
                return Err(Failure::Sense(ua));
            }
        }
        let info = info?;
        ctx.layout = info.layout;
        if !opcodes::offered(self, info) {
            return Err(Sense::INVALID_COMMAND_OPERATION_CODE.into());
        }
        trace!("nexus {}: {}", ctx.nexus.id, info.name);
        opcodes::check_cdb(info, &ctx.cdb)?;
        let state = self.port_group(ctx.nexus.relative_port).state;
        if let Some(refused) = alua::refusal(
            state,
            info.flags & ALUA_STANDBY_OK != 0,
            info.flags & ALUA_UNAVAILABLE_OK != 0,
        ) {
            return Err(refused.into());
        }
        if info.flags & SANITIZE_OK == 0 {
            // In failure mode, SANITIZE itself is how the unit recovers.
            let medium = info.flags & MEDIA != 0 && info.opcode != 0x48;
            if let Some(refused) = self.sanitizer().refusal(medium) {
                return Err(refused);
            }
        }
        if info.flags & MEDIA != 0 && self.stopped() {
            return Err(Sense::NOT_READY_INITIALIZING_COMMAND_REQUIRED.into());
        }
        let access = opcodes::access(info);
        if access != Access::Allowed && !self.access_allowed(ctx.nexus, access) {
            return Err(Failure::Status(Status::ReservationConflict));
        }
        if info.flags & WRITES != 0 && self.read_only() {
            return Err(Sense::WRITE_PROTECTED.into());
        }
        (info.handler)(self, ctx)
    }
}
