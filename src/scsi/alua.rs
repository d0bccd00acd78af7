// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Asymmetric logical unit access (SPC-4 5.15): every controller is a
//! target port group of its own, with the relative target port it presents
//! and an access state the operator gives it (`--socket ...,alua-state=`).
//! The states are implicit (TPGS 01b): the daemon sets them, SET TARGET
//! PORT GROUPS is not offered. A logical unit knows the port groups of
//! every controller that serves it, and REPORT TARGET PORT GROUPS lists
//! them all, so that a multipath initiator orders its paths by them.

use std::fmt;
use std::str::FromStr;

use super::sense::Sense;

/// Primary target port asymmetric access states (SPC-4 table 5.15.2.1);
/// the code is the ASYMMETRIC ACCESS STATE field's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AluaState {
    #[default]
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
}

impl FromStr for AluaState {
    type Err = String;

    fn from_str(s: &str) -> Result<AluaState, String> {
        match s {
            "active-optimized" | "ao" => Ok(AluaState::ActiveOptimized),
            "active-non-optimized" | "ano" => Ok(AluaState::ActiveNonOptimized),
            "standby" => Ok(AluaState::Standby),
            "unavailable" => Ok(AluaState::Unavailable),
            _ => Err(format!(
                "'{s}' is not an ALUA state (active-optimized, active-non-optimized, standby, unavailable)"
            )),
        }
    }
}

impl fmt::Display for AluaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AluaState::ActiveOptimized => "active-optimized",
            AluaState::ActiveNonOptimized => "active-non-optimized",
            AluaState::Standby => "standby",
            AluaState::Unavailable => "unavailable",
        })
    }
}

/// One target port group: a controller's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortGroup {
    /// TARGET PORT GROUP identifier (the controller's relative target port).
    pub id: u16,
    /// The relative target port identifier of its one target port.
    pub relative_port: u16,
    pub state: AluaState,
}

/// The sense a command gets through a target port in `state` that it may
/// not use there (SPC-4 5.15.2.4-5); `standby_ok`/`unavailable_ok` are the
/// command's flags from the opcode table.
pub(crate) fn refusal(state: AluaState, standby_ok: bool, unavailable_ok: bool) -> Option<Sense> {
    match state {
        AluaState::ActiveOptimized | AluaState::ActiveNonOptimized => None,
        AluaState::Standby if standby_ok => None,
        AluaState::Standby => Some(Sense::TARGET_PORT_IN_STANDBY_STATE),
        AluaState::Unavailable if unavailable_ok => None,
        AluaState::Unavailable => Some(Sense::TARGET_PORT_IN_UNAVAILABLE_STATE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_by_name_and_short_name() {
        assert_eq!("ao".parse(), Ok(AluaState::ActiveOptimized));
        assert_eq!(
            "active-non-optimized".parse(),
            Ok(AluaState::ActiveNonOptimized)
        );
        assert_eq!("standby".parse(), Ok(AluaState::Standby));
        assert!("offline".parse::<AluaState>().is_err());
        assert_eq!(AluaState::Unavailable.to_string(), "unavailable");
    }

    #[test]
    fn standby_refuses_what_is_not_allowed_there() {
        assert_eq!(refusal(AluaState::ActiveNonOptimized, false, false), None);
        assert_eq!(refusal(AluaState::Standby, true, false), None);
        assert_eq!(
            refusal(AluaState::Standby, false, false),
            Some(Sense::TARGET_PORT_IN_STANDBY_STATE)
        );
        assert_eq!(
            refusal(AluaState::Unavailable, true, false),
            Some(Sense::TARGET_PORT_IN_UNAVAILABLE_STATE)
        );
    }
}
