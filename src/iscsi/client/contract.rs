// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The iSCSI session as the device sees every remote LUN's session
//! (`remote::Session`): task management in SAM terms mapped to RFC 7143's
//! function and response codes here, and nowhere in the device.

use std::os::fd::RawFd;

use super::{Client, Request};
use crate::iscsi::codes::{TmfFunction, TmfResponse};
use crate::remote::{EventHook, Session, TaskManagement, TmfOutcome};

impl Session for Client {
    fn id(&self) -> usize {
        self.session_id()
    }

    fn protocol(&self) -> &'static str {
        "iSCSI"
    }

    fn submit_all(&self, requests: Vec<Request>) {
        Client::submit_all(self, requests);
    }

    fn task_management(&self, function: TaskManagement, lun: [u8; 8]) -> TmfOutcome {
        let (f, id) = match function {
            TaskManagement::AbortTask(id) => (TmfFunction::AbortTask, Some(id)),
            TaskManagement::AbortTaskSet => (TmfFunction::AbortTaskSet, None),
            TaskManagement::ClearAca => (TmfFunction::ClearAca, None),
            TaskManagement::ClearTaskSet => (TmfFunction::ClearTaskSet, None),
            TaskManagement::LogicalUnitReset => (TmfFunction::LogicalUnitReset, None),
        };
        outcome(Client::task_management(self, f, lun, id))
    }

    fn reset_nexus(&self) {
        Client::reset_nexus(self);
    }

    fn activate(&self) {
        Client::activate(self);
    }

    fn deactivate(&self) {
        Client::deactivate(self);
    }

    fn receive_fd(&self) -> RawFd {
        Client::receive_fd(self)
    }

    fn receive(&self) {
        Client::receive(self);
    }

    fn attach_receiver(&self) -> Box<dyn Send> {
        Box::new(Client::attach_receiver(self))
    }

    fn add_event_hook(&self, hook: EventHook) -> u64 {
        Client::add_event_hook(self, hook)
    }

    fn remove_event_hook(&self, id: u64) {
        Client::remove_event_hook(self, id);
    }

    fn status(&self) -> serde_json::Value {
        serde_json::to_value(Client::status(self)).unwrap_or_default()
    }
}

/// An iSCSI task management response (RFC 7143 11.6.1) as the device
/// needs it: "no such task" is done too (the task completed before the
/// abort reached the target).
fn outcome(answer: crate::iscsi::session::TmfAnswer) -> TmfOutcome {
    match answer {
        Ok(TmfResponse::FunctionComplete | TmfResponse::TaskDoesNotExist) => TmfOutcome::Complete,
        Ok(TmfResponse::LunDoesNotExist) => TmfOutcome::NoSuchLun,
        Ok(other) => TmfOutcome::Rejected(format!("iSCSI response {other:?}")),
        Err(unknown) => TmfOutcome::Rejected(format!("iSCSI response {unknown:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::codes::UnknownCode;

    #[test]
    fn iscsi_task_management_responses_map_to_what_the_device_does() {
        assert_eq!(
            outcome(Ok(TmfResponse::FunctionComplete)),
            TmfOutcome::Complete
        );
        assert_eq!(
            outcome(Ok(TmfResponse::TaskDoesNotExist)),
            TmfOutcome::Complete
        );
        assert_eq!(
            outcome(Ok(TmfResponse::LunDoesNotExist)),
            TmfOutcome::NoSuchLun
        );
        for r in [
            TmfResponse::TaskStillAllegiant,
            TmfResponse::ReassignmentNotSupported,
            TmfResponse::NotSupported,
            TmfResponse::AuthorizationFailed,
            TmfResponse::FunctionRejected,
        ] {
            assert!(matches!(outcome(Ok(r)), TmfOutcome::Rejected(_)), "{r:?}");
        }
        assert!(matches!(
            outcome(Err(UnknownCode {
                what: "task management response",
                value: 9
            })),
            TmfOutcome::Rejected(_)
        ));
    }
}
