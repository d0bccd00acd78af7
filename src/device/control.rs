// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control queue (virtio 5.6.6.2): task management functions and
//! asynchronous notification query/subscribe.

use std::mem::size_of;

use log::{debug, info};

use super::inflight::Scope;
use super::{notify, ScsiBackend, Vring};
use crate::remote::{RemoteLun, Session, TaskManagement, TmfOutcome};
use crate::scsi::LunAddress;
use crate::virtio::buffers::ChainBuffers;
use crate::virtio::{
    CtrlAnReq, CtrlAnResp, CtrlTmfReq, CtrlTmfResp, CtrlType, Response, TmfSubtype, VirtioLun,
};
use vm_memory::{ByteValued, Le32};

impl ScsiBackend {
    pub(super) fn process_control_queue(&self, vring: &Vring) {
        let Some(mem) = self.memory() else {
            return;
        };
        loop {
            if vring.disable_notification().is_err() {
                return;
            }
            let chains = match vring.pop_all(&mem) {
                Ok(c) => c,
                Err(e) => {
                    self.guest_error(format_args!("Control queue: {e}"));
                    return;
                }
            };
            for (head, bufs) in chains {
                let (used, written) = match bufs {
                    Ok(bufs) => (self.control_request(&mem, &bufs), bufs.writable),
                    Err(e) => {
                        self.guest_error(format_args!("Control queue: {e}"));
                        (0, Default::default())
                    }
                };
                let _ = vring.add_used(head, used, &written);
                // Each TMF may have waited: tell the driver right away.
                notify(vring);
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
    }

    /// Handle one control request; returns the number of bytes written.
    /// (Crate-visible for the fuzzer: `fuzzing::virtio_control`.)
    pub(crate) fn control_request(
        &self,
        mem: &crate::virtio::buffers::GuestMemory,
        bufs: &ChainBuffers,
    ) -> u32 {
        let mut ty = Le32::default();
        if bufs.readable.read_at(mem, 0, ty.as_mut_slice()).is_err() {
            self.guest_error(format_args!("Control queue: request without a type"));
            return 0;
        }
        match CtrlType::try_from(ty.to_native()) {
            Ok(CtrlType::Tmf) => {
                let mut req = CtrlTmfReq::default();
                if bufs.readable.read_at(mem, 0, req.as_mut_slice()).is_err()
                    || bufs.writable.is_empty()
                {
                    self.guest_error(format_args!("Control queue: truncated TMF request"));
                    return 0;
                }
                let r = self.tmf(req.subtype.to_native(), &req.lun, req.tag.to_native());
                let resp = CtrlTmfResp { response: r as u8 };
                write_response(mem, bufs, &resp)
            }
            Ok(CtrlType::AnQuery | CtrlType::AnSubscribe) => {
                if bufs.readable.len() < size_of::<CtrlAnReq>() as u64 {
                    self.guest_error(format_args!("Control queue: truncated AN request"));
                    return 0;
                }
                // No asynchronous notification events are supported: the
                // event_actual mask is empty (virtio 5.6.6.2.1).
                let resp = CtrlAnResp {
                    event_actual: Le32::from(0),
                    response: Response::Ok as u8,
                };
                write_response(mem, bufs, &resp)
            }
            Err(other) => {
                self.guest_error(format_args!("Control queue: unknown request type {other}"));
                0
            }
        }
    }

    /// Execute a task management function (SAM-5 7) and return its response.
    fn tmf(&self, subtype: u32, lun: &[u8; 8], tag: u64) -> Response {
        let controller = &self.inner.controller;
        let Ok(subtype) = TmfSubtype::try_from(subtype) else {
            return Response::FunctionRejected;
        };
        let addr = match VirtioLun::parse(lun) {
            VirtioLun::BadTarget => return Response::BadTarget,
            VirtioLun::Target0 { b0, b1 } => LunAddress::from_first_level(b0, b1),
            VirtioLun::ReportLunsWellKnown => LunAddress::ReportLunsWellKnown,
            VirtioLun::Unsupported => LunAddress::Unsupported,
        };
        let lu = match addr {
            LunAddress::Lun(l) => controller.target.lu(l),
            _ => None,
        };
        // Remote (passed-through) LUNs exist too: their commands are aborted
        // and waited for here like local ones.
        let exists = matches!(addr, LunAddress::Lun(l) if controller.target.has_lun(l));
        if !exists && subtype != TmfSubtype::ITNexusReset {
            return Response::IncorrectLun;
        }
        let inflight = &self.inner.inflight;
        debug!(
            "{}: TMF {subtype:?} lun {addr:?} tag {tag:#x}",
            controller.name
        );
        let remote = match addr {
            LunAddress::Lun(l) => controller.remote.get(&l),
            _ => None,
        };
        if let Some(remote) = remote {
            return self.remote_tmf(subtype, addr, tag, &remote);
        }
        match subtype {
            TmfSubtype::AbortTask => {
                inflight.abort_and_wait(Scope::Task(addr, tag), Response::Aborted);
                Response::Ok
            }
            TmfSubtype::AbortTaskSet | TmfSubtype::ClearTaskSet => {
                inflight.abort_and_wait(Scope::Lun(addr), Response::Aborted);
                Response::Ok
            }
            // ACA is never established (NORMACA = 0): nothing to clear.
            TmfSubtype::ClearAca => Response::FunctionRejected,
            TmfSubtype::ITNexusReset => {
                info!("{}: I_T nexus reset", controller.name);
                // Every remote session of this controller is its nexus too.
                let mut reset: Vec<std::sync::Arc<dyn Session>> = Vec::new();
                for r in controller.remote.values() {
                    if !reset.iter().any(|s| s.id() == r.session.id()) {
                        r.session.reset_nexus();
                        reset.push(r.session);
                    }
                }
                inflight.abort_and_wait(Scope::All, Response::Reset);
                for (_, lu) in controller.target.luns() {
                    lu.nexus_reset(&controller.nexus);
                }
                Response::Ok
            }
            TmfSubtype::LogicalUnitReset => {
                info!("{}: logical unit reset of {addr:?}", controller.name);
                inflight.abort_and_wait(Scope::Lun(addr), Response::Reset);
                if let Some(lu) = lu {
                    lu.lun_reset();
                }
                Response::Ok
            }
            TmfSubtype::QueryTask => query(inflight.any(Scope::Task(addr, tag))),
            TmfSubtype::QueryTaskSet => query(inflight.any(Scope::Lun(addr))),
        }
    }
}

impl ScsiBackend {
    /// A TMF on a remote LUN: the target performs it on this controller's
    /// session (for iSCSI, RFC 7143 11.5); the commands it ended complete
    /// with VIRTIO_SCSI_S_ABORTED (or RESET) before the answer goes back.
    fn remote_tmf(
        &self,
        subtype: TmfSubtype,
        addr: LunAddress,
        tag: u64,
        remote: &RemoteLun,
    ) -> Response {
        let (function, scope) = match subtype {
            TmfSubtype::AbortTask => (TaskManagement::AbortTask(tag), Scope::Task(addr, tag)),
            TmfSubtype::AbortTaskSet => (TaskManagement::AbortTaskSet, Scope::Lun(addr)),
            TmfSubtype::ClearAca => (TaskManagement::ClearAca, Scope::Lun(addr)),
            TmfSubtype::ClearTaskSet => (TaskManagement::ClearTaskSet, Scope::Lun(addr)),
            TmfSubtype::LogicalUnitReset => (TaskManagement::LogicalUnitReset, Scope::Lun(addr)),
            // Answered from what is in flight here; I_T NEXUS RESET is not
            // per LUN (handled for the whole controller).
            TmfSubtype::QueryTask => return query(self.inner.inflight.any(Scope::Task(addr, tag))),
            TmfSubtype::QueryTaskSet => return query(self.inner.inflight.any(Scope::Lun(addr))),
            TmfSubtype::ITNexusReset => return Response::FunctionRejected,
        };
        let name = &self.inner.controller.name;
        let protocol = remote.session.protocol();
        if function.is_reset() {
            info!("{name}: logical unit reset of {addr:?} (at the {protocol} target)");
        }
        let answer = remote.session.task_management(function, remote.lun);
        if subtype == TmfSubtype::AbortTask {
            info!(
                "{name}: abort of task {tag:#x} on {addr:?} at the {protocol} target: {answer:?}"
            );
        }
        match answer {
            TmfOutcome::Complete => {
                if function != TaskManagement::ClearAca {
                    let ended = if function.is_reset() {
                        Response::Reset
                    } else {
                        Response::Aborted
                    };
                    self.inner.inflight.abort_and_wait(scope, ended);
                }
                Response::Ok
            }
            TmfOutcome::NoSuchLun => Response::IncorrectLun,
            TmfOutcome::Rejected(why) => {
                debug!("{name}: the {protocol} target refused TMF {subtype:?}: {why}");
                Response::FunctionRejected
            }
        }
    }
}

/// Write a control response; returns its length, or 0 if the guest's
/// buffer cannot hold it.
fn write_response<T: ByteValued>(
    mem: &crate::virtio::buffers::GuestMemory,
    bufs: &ChainBuffers,
    resp: &T,
) -> u32 {
    match bufs.writable.write_at(mem, 0, resp.as_slice()) {
        Ok(()) => size_of::<T>() as u32,
        Err(_) => 0,
    }
}

/// QUERY TASK / QUERY TASK SET: FUNCTION SUCCEEDED when a task exists,
/// FUNCTION COMPLETE otherwise (SAM-5 7.9, 7.10).
fn query(exists: bool) -> Response {
    if exists {
        Response::FunctionSucceeded
    } else {
        Response::Ok
    }
}
