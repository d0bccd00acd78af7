// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! iSCSI code points (RFC 7143) as enums: task management functions and
//! responses, asynchronous event codes, reject reasons and login status
//! classes. A byte from a target converts with `TryFrom<u8>`, which gives
//! `UnknownCode` for a value the RFC does not define (reserved or vendor
//! specific): never a panic.

/// A byte that is not one of the codes of its field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown {what} {value:#04x}")]
pub struct UnknownCode {
    /// The field.
    pub what: &'static str,
    pub value: u8,
}

/// An enum of one-byte codes with its `TryFrom<u8>`.
macro_rules! codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl TryFrom<u8> for $name {
            type Error = UnknownCode;

            fn try_from(v: u8) -> Result<$name, UnknownCode> {
                match v {
                    $($value => Ok($name::$variant),)*
                    value => Err(UnknownCode { what: $what, value }),
                }
            }
        }
    };
}

codes! {
    /// Task management functions (RFC 7143 11.5.1, the Function field).
    pub enum TmfFunction ("task management function") {
        AbortTask = 1,
        AbortTaskSet = 2,
        ClearAca = 3,
        ClearTaskSet = 4,
        LogicalUnitReset = 5,
        TargetWarmReset = 6,
        TargetColdReset = 7,
        TaskReassign = 8,
    }
}

impl TmfFunction {
    /// Whether the function resets (the commands it ends were reset, not
    /// aborted).
    pub fn is_reset(self) -> bool {
        matches!(
            self,
            TmfFunction::LogicalUnitReset
                | TmfFunction::TargetWarmReset
                | TmfFunction::TargetColdReset
        )
    }
}

codes! {
    /// Task management responses (RFC 7143 11.6.1, the Response field).
    pub enum TmfResponse ("task management response") {
        FunctionComplete = 0,
        TaskDoesNotExist = 1,
        LunDoesNotExist = 2,
        TaskStillAllegiant = 3,
        ReassignmentNotSupported = 4,
        NotSupported = 5,
        AuthorizationFailed = 6,
        FunctionRejected = 255,
    }
}

codes! {
    /// Asynchronous event codes (RFC 7143 11.9.1, AsyncEvent).
    pub enum AsyncEvent ("asynchronous event") {
        /// A SCSI asynchronous event: sense data in the data segment.
        ScsiEvent = 0,
        /// Log out within Parameter3 seconds.
        LogoutRequest = 1,
        /// The target will drop the connection (Parameter2: Time2Wait).
        ConnectionDrop = 2,
        /// The target will drop every connection of the session.
        SessionDrop = 3,
        /// The target asks for a parameter negotiation (a Text Request).
        NegotiationRequest = 4,
        /// Tasks terminated (only with TaskReporting=FastAbort).
        TaskTermination = 5,
        VendorSpecific = 255,
    }
}

codes! {
    /// Reject reasons (RFC 7143 11.17.1).
    pub enum RejectReason ("reject reason") {
        DataDigestError = 0x02,
        SnackReject = 0x03,
        ProtocolError = 0x04,
        CommandNotSupported = 0x05,
        ImmediateCommandReject = 0x06,
        TaskInProgress = 0x07,
        InvalidDataAck = 0x08,
        InvalidPduField = 0x09,
        LongOperationReject = 0x0a,
        /// Formerly "Negotiation Reset", deprecated by RFC 7143.
        NegotiationReset = 0x0b,
        WaitingForLogout = 0x0c,
    }
}

codes! {
    /// Login status classes (RFC 7143 11.13.5, Status-Class).
    pub enum StatusClass ("login status class") {
        Success = 0,
        Redirection = 1,
        InitiatorError = 2,
        TargetError = 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each table is the RFC's, copied from its text.

    #[test]
    fn task_management_functions_have_the_rfc_values() {
        // RFC 7143 11.5.1.
        for (v, f) in [
            (1, TmfFunction::AbortTask),
            (2, TmfFunction::AbortTaskSet),
            (3, TmfFunction::ClearAca),
            (4, TmfFunction::ClearTaskSet),
            (5, TmfFunction::LogicalUnitReset),
            (6, TmfFunction::TargetWarmReset),
            (7, TmfFunction::TargetColdReset),
            (8, TmfFunction::TaskReassign),
        ] {
            assert_eq!(TmfFunction::try_from(v), Ok(f));
            assert_eq!(f as u8, v);
        }
        for v in [0, 9, 0x7f, 0xff] {
            assert!(TmfFunction::try_from(v).is_err(), "{v}");
        }
    }

    #[test]
    fn task_management_responses_have_the_rfc_values() {
        // RFC 7143 11.6.1.
        for (v, r) in [
            (0, TmfResponse::FunctionComplete),
            (1, TmfResponse::TaskDoesNotExist),
            (2, TmfResponse::LunDoesNotExist),
            (3, TmfResponse::TaskStillAllegiant),
            (4, TmfResponse::ReassignmentNotSupported),
            (5, TmfResponse::NotSupported),
            (6, TmfResponse::AuthorizationFailed),
            (255, TmfResponse::FunctionRejected),
        ] {
            assert_eq!(TmfResponse::try_from(v), Ok(r));
            assert_eq!(r as u8, v);
        }
        assert_eq!(
            TmfResponse::try_from(7),
            Err(UnknownCode {
                what: "task management response",
                value: 7
            })
        );
    }

    #[test]
    fn async_events_have_the_rfc_values_and_reserved_ones_are_unknown() {
        // RFC 7143 11.9.1: 0-5 and 255; 6-254 reserved.
        for (v, e) in [
            (0, AsyncEvent::ScsiEvent),
            (1, AsyncEvent::LogoutRequest),
            (2, AsyncEvent::ConnectionDrop),
            (3, AsyncEvent::SessionDrop),
            (4, AsyncEvent::NegotiationRequest),
            (5, AsyncEvent::TaskTermination),
            (255, AsyncEvent::VendorSpecific),
        ] {
            assert_eq!(AsyncEvent::try_from(v), Ok(e));
        }
        for v in 6..=254 {
            assert!(AsyncEvent::try_from(v).is_err(), "{v}");
        }
    }

    #[test]
    fn reject_reasons_have_the_rfc_values() {
        // RFC 7143 11.17.1: 0x01 reserved, 0x02-0x0c defined.
        for (v, r) in [
            (0x02, RejectReason::DataDigestError),
            (0x03, RejectReason::SnackReject),
            (0x04, RejectReason::ProtocolError),
            (0x05, RejectReason::CommandNotSupported),
            (0x06, RejectReason::ImmediateCommandReject),
            (0x07, RejectReason::TaskInProgress),
            (0x08, RejectReason::InvalidDataAck),
            (0x09, RejectReason::InvalidPduField),
            (0x0a, RejectReason::LongOperationReject),
            (0x0b, RejectReason::NegotiationReset),
            (0x0c, RejectReason::WaitingForLogout),
        ] {
            assert_eq!(RejectReason::try_from(v), Ok(r));
        }
        for v in [0x00, 0x01, 0x0d, 0xff] {
            assert!(RejectReason::try_from(v).is_err(), "{v}");
        }
    }

    #[test]
    fn login_status_classes_have_the_rfc_values() {
        // RFC 7143 11.13.5.
        for (v, c) in [
            (0, StatusClass::Success),
            (1, StatusClass::Redirection),
            (2, StatusClass::InitiatorError),
            (3, StatusClass::TargetError),
        ] {
            assert_eq!(StatusClass::try_from(v), Ok(c));
        }
        assert!(StatusClass::try_from(4).is_err());
        assert_eq!(
            StatusClass::try_from(9).unwrap_err().to_string(),
            "Unknown login status class 0x09"
        );
    }

    #[test]
    fn resets_are_the_reset_functions() {
        assert!(TmfFunction::LogicalUnitReset.is_reset());
        assert!(TmfFunction::TargetColdReset.is_reset());
        assert!(!TmfFunction::AbortTaskSet.is_reset());
    }
}
