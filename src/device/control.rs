// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control queue (virtio 5.6.6.2): task management functions and
//! asynchronous notification query/subscribe.

use std::mem::size_of;

use log::{debug, info};

use super::inflight::Scope;
use super::{notify, ScsiBackend, Vring};
use crate::iscsi::codes::{TmfFunction, TmfResponse};
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
        // Passed-through (iSCSI) LUNs exist too: their commands are aborted
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
                // Every iSCSI session of this controller is its nexus too.
                let mut reset: Vec<crate::iscsi::client::Client> = Vec::new();
                for r in controller.remote.values() {
                    if !reset.iter().any(|c| c.same_session(&r.client)) {
                        r.client.reset_nexus();
                        reset.push(r.client);
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
    /// A TMF on a LUN of an iSCSI target: the target performs it (RFC 7143
    /// 11.5) on this controller's session; the commands it ended complete
    /// with VIRTIO_SCSI_S_ABORTED (or RESET) before the answer goes back.
    fn remote_tmf(
        &self,
        subtype: TmfSubtype,
        addr: LunAddress,
        tag: u64,
        remote: &super::RemoteLun,
    ) -> Response {
        let (function, id, scope, ended) = match subtype {
            TmfSubtype::AbortTask => (
                TmfFunction::AbortTask,
                Some(tag),
                Scope::Task(addr, tag),
                Response::Aborted,
            ),
            TmfSubtype::AbortTaskSet => (
                TmfFunction::AbortTaskSet,
                None,
                Scope::Lun(addr),
                Response::Aborted,
            ),
            TmfSubtype::ClearAca => (
                TmfFunction::ClearAca,
                None,
                Scope::Lun(addr),
                Response::Aborted,
            ),
            TmfSubtype::ClearTaskSet => (
                TmfFunction::ClearTaskSet,
                None,
                Scope::Lun(addr),
                Response::Aborted,
            ),
            TmfSubtype::LogicalUnitReset => (
                TmfFunction::LogicalUnitReset,
                None,
                Scope::Lun(addr),
                Response::Reset,
            ),
            // Answered from what is in flight here; I_T NEXUS RESET is not
            // per LUN (handled for the whole controller).
            TmfSubtype::QueryTask => return query(self.inner.inflight.any(Scope::Task(addr, tag))),
            TmfSubtype::QueryTaskSet => return query(self.inner.inflight.any(Scope::Lun(addr))),
            TmfSubtype::ITNexusReset => return Response::FunctionRejected,
        };
        if subtype == TmfSubtype::LogicalUnitReset {
            info!(
                "{}: logical unit reset of {addr:?} (at the iSCSI target)",
                self.inner.controller.name
            );
        }
        let answer = remote.client.task_management(function, remote.lun, id);
        if subtype == TmfSubtype::AbortTask {
            info!(
                "{}: abort of task {tag:#x} on {addr:?}: iSCSI response {answer:?}",
                self.inner.controller.name
            );
        }
        match answer {
            // No such task: it completed already.
            Ok(TmfResponse::FunctionComplete | TmfResponse::TaskDoesNotExist) => {
                if function != TmfFunction::ClearAca {
                    self.inner.inflight.abort_and_wait(scope, ended);
                }
                Response::Ok
            }
            Ok(TmfResponse::LunDoesNotExist) => Response::IncorrectLun,
            other => {
                debug!(
                    "{}: the iSCSI target answered TMF {subtype:?} with {other:?}",
                    self.inner.controller.name
                );
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
