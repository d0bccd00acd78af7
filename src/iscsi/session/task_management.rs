// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Task management (RFC 7143 11.5, 11.6): which commands a function covers,
//! the request, and the commands its answer terminates.

use super::*;

/// A target's answer to a task management request: a response code of
/// RFC 7143 11.6.1, or the byte it sent instead.
pub type TmfAnswer = Result<TmfResponse, UnknownCode>;

/// What `Session::task_management` did at once.
#[derive(Debug, PartialEq, Eq)]
pub struct TmfStart {
    /// Whether a request went to the target (an answer will come).
    pub sent: bool,
    /// Commands dropped before they reached the target.
    pub aborted: Vec<u64>,
}

/// Whether task management `function` for `lun`, and for ABORT TASK the
/// command tagged `target`, covers the command `cmd_tag` on `cmd_lun`
/// (RFC 7143 11.5.1).
pub fn tmf_covers(
    function: TmfFunction,
    lun: [u8; 8],
    target: Option<u64>,
    cmd_lun: [u8; 8],
    cmd_tag: u64,
) -> bool {
    match function {
        TmfFunction::AbortTask => Some(cmd_tag) == target && cmd_lun == lun,
        TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet | TmfFunction::LogicalUnitReset => {
            cmd_lun == lun
        }
        TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => true,
        // CLEAR ACA ends no task; TASK REASSIGN moves one (ErrorRecovery
        // Level 2, never negotiated).
        TmfFunction::ClearAca | TmfFunction::TaskReassign => false,
    }
}

impl Session {
    /// Task management request (RFC 7143 11.5): `function` for `lun`
    /// (ABORT TASK: of the command tagged `target`). Commands in its scope still waiting for the CmdSN window
    /// never reached the target: they are dropped here and their tags
    /// returned. The request itself is sent (immediate) unless ABORT TASK
    /// has nothing left to abort at the target.
    pub fn task_management(
        &mut self,
        tag: u64,
        function: TmfFunction,
        lun: [u8; 8],
        target: Option<u64>,
    ) -> TmfStart {
        let in_scope =
            |t: &Task| t.tmf.is_none() && tmf_covers(function, lun, target, t.lun, t.tag);
        let unsent: Vec<u32> = self
            .waiting
            .iter()
            .copied()
            .filter(|itt| self.tasks.get(itt).is_some_and(in_scope))
            .collect();
        self.waiting.retain(|itt| !unsent.contains(itt));
        let aborted = unsent
            .iter()
            .filter_map(|itt| self.tasks.remove(itt))
            .map(|t| t.tag)
            .collect();
        let (ref_itt, ref_cmd_sn) = match self.tasks.iter().find(|(_, t)| in_scope(t)) {
            Some((&itt, t)) if function == TmfFunction::AbortTask => (itt, t.cmd_sn),
            None if function == TmfFunction::AbortTask => {
                return TmfStart {
                    sent: false,
                    aborted,
                }
            }
            _ => (RESERVED_TAG, self.cmd_sn),
        };
        let itt = self.alloc_itt();
        let mut h = bhs::TaskMgmtRequest::new();
        h.opcode |= bhs::IMMEDIATE;
        h.flags = bhs::FINAL | function as u8;
        h.lun = lun;
        h.itt = itt.into();
        h.referenced_task_tag = ref_itt.into();
        h.cmd_sn = self.cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        h.ref_cmd_sn = ref_cmd_sn.into();
        let p = Pdu::with_header(&h);
        self.tasks.insert(
            itt,
            Task {
                tag,
                lun,
                cdb: Vec::new(),
                read_len: 0,
                write: Payload::Bytes(Vec::new()),
                data: Vec::new(),
                sink: None,
                received: 0,
                sent: true,
                solicitable: 0,
                cmd_sn: self.cmd_sn,
                tmf: Some(function),
                ref_itt,
            },
        );
        self.out.push_back(p.into());
        TmfStart {
            sent: true,
            aborted,
        }
    }

    /// The commands a task management function that completed terminated
    /// at the target: they get no response of their own (RFC 7143 4.2.3.3).
    pub(super) fn terminated_by(&mut self, tmf: &Task, response: TmfAnswer) -> Vec<u64> {
        let Some(function) = tmf.tmf else {
            return Vec::new();
        };
        // Task does not exist: for ABORT TASK the target has no record of
        // it, so no answer will ever come.
        let done = match response {
            Ok(TmfResponse::FunctionComplete) => true,
            Ok(TmfResponse::TaskDoesNotExist) => function == TmfFunction::AbortTask,
            _ => false,
        };
        if !done {
            return Vec::new();
        }
        let hit: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(&itt, t)| {
                t.tmf.is_none()
                    && t.sent
                    && match function {
                        TmfFunction::AbortTask => itt == tmf.ref_itt,
                        // Commands sent before the TMF (its CmdSN is the
                        // next one, it being immediate).
                        TmfFunction::AbortTaskSet
                        | TmfFunction::ClearTaskSet
                        | TmfFunction::LogicalUnitReset => {
                            t.lun == tmf.lun && sn_lt(t.cmd_sn, tmf.cmd_sn)
                        }
                        TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
                            sn_lt(t.cmd_sn, tmf.cmd_sn)
                        }
                        TmfFunction::ClearAca | TmfFunction::TaskReassign => false,
                    }
            })
            .map(|(&itt, _)| itt)
            .collect();
        hit.iter()
            .filter_map(|itt| self.tasks.remove(itt))
            .map(|t| t.tag)
            .collect()
    }
}
