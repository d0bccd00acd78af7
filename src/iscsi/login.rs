// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The login phase (RFC 7143 6.3, 13): security negotiation with CHAP
//! (one-way or mutual), operational negotiation, and the transition to the
//! full-feature phase. Sans-IO: [`Login::start`] gives the first Login
//! Request, [`Login::receive`] takes each Login Response and gives the next
//! request or the negotiated parameters.

#![deny(clippy::indexing_slicing, clippy::string_slice)]

use super::bhs::{self, login, Bhs};
use super::chap::{self, Algorithm};
use super::codes::StatusClass;
use super::pdu::{Digests, Opcode, Pdu};
use super::secret::Secret;
use super::text;

/// Login stages (RFC 7143 11.12.3).
const SECURITY: u8 = 0;
const OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;
/// Defaults when a key is not negotiated (RFC 7143 13).
const DEFAULT_MRDSL: u32 = 8192;
/// What MaxRecvDataSegmentLength, MaxBurstLength and FirstBurstLength may
/// be (RFC 7143 13.12, 13.13, 13.14: 512 to 2^24-1). For the first, the
/// upper bound is also what DataSegmentLength holds
/// (`pdu::MAX_DATA_SEGMENT_LENGTH`): a target declaring more would have
/// us send segments whose length field reads as another length.
pub const LENGTH_KEY_RANGE: std::ops::RangeInclusive<u32> = 512..=0x00ff_ffff;
/// Rounds a stage may take before we give up on a target that never
/// transits.
const MAX_ROUNDS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    /// Prints as `***` (`Debug` of this and of `LoginParams` included).
    pub secret: Secret,
}

/// What to log in to and how.
#[derive(Clone, Debug)]
pub struct LoginParams {
    pub initiator_name: String,
    /// None: a discovery session.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    pub tsih: u16,
    /// Our CHAP account on the target.
    pub chap: Option<Credentials>,
    /// The target's account, for mutual CHAP.
    pub mutual: Option<Credentials>,
    pub header_digest: bool,
    pub data_digest: bool,
    /// What we can receive in one PDU.
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_cmd_sn: u32,
    /// The CHAP algorithms to offer (fewer after a target refused more,
    /// see [`chap::Offer::weaker`]).
    pub chap_offer: chap::Offer,
}

/// The result of operational negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub digests: Digests,
    /// Largest data segment the target accepts from us (in
    /// `LENGTH_KEY_RANGE`).
    pub max_xmit_data_segment_length: u32,
    pub max_recv_data_segment_length: u32,
    /// In `LENGTH_KEY_RANGE`.
    pub max_burst_length: u32,
    /// In `LENGTH_KEY_RANGE`.
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub tsih: u16,
    pub cmd_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// The CHAP algorithm we authenticated with (None: no CHAP).
    pub chap: Option<Algorithm>,
    /// Other keys the target sent (e.g. TargetAlias).
    pub target_keys: Vec<(String, String)>,
}

/// What a target error (status class 03h and unknown classes, RFC 7143
/// 11.13.5) says.
fn target_error_text(class: u8, detail: u8) -> &'static str {
    match (StatusClass::try_from(class), detail) {
        (Ok(StatusClass::TargetError), 1) => "the target's service is unavailable",
        (Ok(StatusClass::TargetError), 2) => "the target is out of resources",
        (Ok(StatusClass::TargetError), _) => "target error",
        _ => "unknown status class",
    }
}

impl LoginError {
    /// Whether another portal, or the same one later, may accept the same
    /// login: a target error (class 03h: "the initiator may retry", RFC
    /// 7143 11.13.5, e.g. a node in maintenance). Authentication, access
    /// and target-name refusals (class 02h) are the same everywhere.
    pub fn is_transient(&self) -> bool {
        matches!(self, LoginError::TargetError { class, .. }
            if *class == StatusClass::TargetError as u8)
    }
}

/// Why a login failed, by class (RFC 7143 11.13.5).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("The target redirects to {address}")]
    Redirect { address: String, permanent: bool },
    #[error("Authentication failed")]
    AuthenticationFailed,
    #[error("The initiator is not allowed to log in to this target (ACL)")]
    Forbidden,
    #[error("Target not found")]
    TargetNotFound,
    #[error("The target was removed")]
    TargetRemoved,
    #[error("Login rejected: initiator error {0:#04x}")]
    InitiatorError(u8),
    #[error("Login failed: {} ({class:#04x}/{detail:#04x})", target_error_text(*class, *detail))]
    TargetError { class: u8, detail: u8 },
    #[error("The target needs CHAP and no credentials are configured")]
    ChapRequired,
    #[error("The target failed mutual CHAP authentication")]
    MutualChapFailed,
    #[error("The target accepts none of the CHAP algorithms allowed ({0})")]
    ChapAlgorithmsRefused(chap::Offer),
    #[error("The target chose CHAP algorithm {chosen}, which is not allowed ({allowed})")]
    ChapAlgorithmNotAllowed {
        chosen: Algorithm,
        allowed: chap::Offer,
    },
    #[error("Login protocol error: {0}")]
    Protocol(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Sent the security-stage keys (AuthMethod).
    Security,
    /// Sent CHAP_A.
    ChapAlgorithm,
    /// Sent CHAP_N/CHAP_R (and our mutual challenge).
    ChapResponse,
    /// Sent operational keys.
    Operational,
    Done,
}

pub enum Step {
    Send(Pdu),
    Done(Negotiated),
}

pub struct Login {
    p: LoginParams,
    state: State,
    itt: u32,
    exp_stat_sn: u32,
    rounds: usize,
    mutual_challenge: Option<(Algorithm, u8, Vec<u8>)>,
    chap_used: Option<Algorithm>,
}

fn protocol(msg: impl Into<String>) -> LoginError {
    LoginError::Protocol(msg.into())
}

impl Login {
    pub fn new(p: LoginParams) -> Login {
        Login {
            p,
            state: State::Security,
            itt: 0,
            exp_stat_sn: 0,
            rounds: 0,
            mutual_challenge: None,
            chap_used: None,
        }
    }

    fn request(&self, csg: u8, nsg: u8, transit: bool, keys: &[(String, String)]) -> Pdu {
        let mut h = bhs::LoginRequest::new();
        h.opcode |= bhs::IMMEDIATE;
        h.flags = (csg << login::CSG_SHIFT)
            | if transit {
                login::TRANSIT | (nsg & login::NSG_MASK)
            } else {
                0
            };
        h.isid = self.p.isid;
        h.tsih = self.p.tsih.into();
        h.itt = self.itt.into();
        h.cmd_sn = self.p.initial_cmd_sn.into();
        h.exp_stat_sn = self.exp_stat_sn.into();
        let mut p = Pdu::with_header(&h);
        p.data = text::encode(keys);
        p
    }

    fn identity_keys(&self) -> Vec<(String, String)> {
        let mut k = vec![("InitiatorName".to_string(), self.p.initiator_name.clone())];
        match &self.p.target_name {
            Some(t) => {
                k.push(("SessionType".into(), "Normal".into()));
                k.push(("TargetName".into(), t.clone()));
            }
            None => k.push(("SessionType".into(), "Discovery".into())),
        }
        k
    }

    fn operational_keys(&self) -> Vec<(String, String)> {
        let dg = |on: bool| if on { "CRC32C,None" } else { "None" };
        let mut k: Vec<(String, String)> = vec![
            ("HeaderDigest".into(), dg(self.p.header_digest).into()),
            ("DataDigest".into(), dg(self.p.data_digest).into()),
            (
                "MaxRecvDataSegmentLength".into(),
                self.p.max_recv_data_segment_length.to_string(),
            ),
        ];
        if self.p.target_name.is_some() {
            for (key, v) in [
                ("InitialR2T", "No".to_string()),
                ("ImmediateData", "Yes".to_string()),
                ("MaxBurstLength", self.p.max_burst_length.to_string()),
                ("FirstBurstLength", self.p.first_burst_length.to_string()),
                ("MaxOutstandingR2T", "1".to_string()),
                ("DataPDUInOrder", "Yes".to_string()),
                ("DataSequenceInOrder", "Yes".to_string()),
                // Result function Maximum (RFC 7143 13.15): we need no
                // wait before a reinstatement, so the target's value decides.
                ("DefaultTime2Wait", "0".to_string()),
                ("DefaultTime2Retain", "0".to_string()),
                ("ErrorRecoveryLevel", "0".to_string()),
                ("MaxConnections", "1".to_string()),
            ] {
                k.push((key.into(), v));
            }
        }
        k
    }

    /// Whether the target has not answered yet a first request that offered
    /// no authentication (AuthMethod=None only).
    pub fn offered_no_auth(&self) -> bool {
        self.state == State::Security && self.p.chap.is_none()
    }

    /// The first Login Request.
    pub fn start(&mut self) -> Pdu {
        let mut keys = self.identity_keys();
        if self.p.chap.is_some() {
            keys.push(("AuthMethod".into(), "CHAP,None".into()));
            self.request(SECURITY, OPERATIONAL, false, &keys)
        } else {
            keys.push(("AuthMethod".into(), "None".into()));
            self.request(SECURITY, OPERATIONAL, true, &keys)
        }
    }

    fn operational(&mut self) -> Pdu {
        self.state = State::Operational;
        self.rounds = 0;
        // The identity keys went out with the first request (start()).
        let keys = self.operational_keys();
        self.request(OPERATIONAL, FULL_FEATURE, true, &keys)
    }

    /// Handle one Login Response.
    pub fn receive(&mut self, r: &Pdu) -> Result<Step, LoginError> {
        if r.opcode() != Some(Opcode::LoginResponse) {
            return Err(protocol(format!(
                "expected a Login Response, got {:?}",
                r.opcode()
            )));
        }
        let h: bhs::LoginResponse = r.header();
        let (class, detail) = (h.status_class, h.status_detail);
        let keys = text::parse(&r.data);
        match StatusClass::try_from(class) {
            Ok(StatusClass::Success) => {}
            Ok(StatusClass::Redirection) => {
                return Err(LoginError::Redirect {
                    address: text::get(&keys, "TargetAddress")
                        .unwrap_or_default()
                        .to_string(),
                    // 0101h: moved temporarily; 0102h: moved permanently.
                    permanent: detail == 0x02,
                });
            }
            // A miscellaneous initiator error in answer to our CHAP_A (or,
            // from some targets, to the response that used an algorithm
            // they could not handle): the list was not acceptable (see
            // chap::Offer).
            Ok(StatusClass::InitiatorError)
                if detail == 0
                    && (self.state == State::ChapAlgorithm
                        || self.state == State::ChapResponse
                            && self.p.chap_offer.weaker().is_some()) =>
            {
                return Err(LoginError::ChapAlgorithmsRefused(self.p.chap_offer))
            }
            Ok(StatusClass::InitiatorError) => {
                return Err(match detail {
                    0x01 => LoginError::AuthenticationFailed,
                    0x02 => LoginError::Forbidden,
                    0x03 => LoginError::TargetNotFound,
                    0x04 => LoginError::TargetRemoved,
                    d => LoginError::InitiatorError(d),
                })
            }
            // Target errors, and classes the RFC does not define.
            Ok(StatusClass::TargetError) | Err(_) => {
                return Err(LoginError::TargetError { class, detail })
            }
        }
        self.exp_stat_sn = r.stat_sn().wrapping_add(1);
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(protocol("the target does not finish the login stage"));
        }
        let transit = h.flags & login::TRANSIT != 0;
        let nsg = h.flags & login::NSG_MASK;
        match self.state {
            State::Security => {
                if transit && nsg == OPERATIONAL {
                    return Ok(Step::Send(self.operational()));
                }
                match text::get(&keys, "AuthMethod") {
                    Some("CHAP") if self.p.chap.is_some() => {
                        self.state = State::ChapAlgorithm;
                        let keys = vec![("CHAP_A".to_string(), self.p.chap_offer.key())];
                        Ok(Step::Send(self.request(
                            SECURITY,
                            OPERATIONAL,
                            false,
                            &keys,
                        )))
                    }
                    Some("CHAP") => Err(LoginError::ChapRequired),
                    Some("None") => Ok(Step::Send(self.request(SECURITY, OPERATIONAL, true, &[]))),
                    Some("Reject") | Some("NotUnderstood") | Some("Irrelevant") => Err(protocol(
                        "the target refused every authentication method we offer",
                    )),
                    _ => Ok(Step::Send(self.request(SECURITY, OPERATIONAL, true, &[]))),
                }
            }
            State::ChapAlgorithm => {
                let creds = self.p.chap.clone().ok_or(LoginError::ChapRequired)?;
                let alg = text::get(&keys, "CHAP_A")
                    .and_then(Algorithm::from_code)
                    .ok_or_else(|| protocol("no usable CHAP_A from the target"))?;
                // The target must choose from our list (RFC 7143 12.1.3); an
                // operator who left out MD5 meant it.
                if !self.p.chap_offer.contains(alg) {
                    return Err(LoginError::ChapAlgorithmNotAllowed {
                        chosen: alg,
                        allowed: self.p.chap_offer,
                    });
                }
                self.chap_used = Some(alg);
                let id: u8 = text::get(&keys, "CHAP_I")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| protocol("bad CHAP_I"))?;
                let challenge = text::get(&keys, "CHAP_C")
                    .and_then(text::decode_binary)
                    .filter(|c| !c.is_empty() && c.len() <= 1024)
                    .ok_or_else(|| protocol("bad CHAP_C"))?;
                let resp = chap::response(alg, id, creds.secret.as_bytes(), &challenge);
                let mut out = vec![
                    ("CHAP_N".to_string(), creds.user.clone()),
                    ("CHAP_R".to_string(), text::encode_hex(&resp)),
                ];
                if self.p.mutual.is_some() {
                    let mine =
                        chap::random(alg.digest_len()).map_err(|e| protocol(e.to_string()))?;
                    // An identifier different from the target's (RFC 7143 12.1.3).
                    let my_id = id.wrapping_add(1);
                    out.push(("CHAP_I".into(), my_id.to_string()));
                    out.push(("CHAP_C".into(), text::encode_hex(&mine)));
                    self.mutual_challenge = Some((alg, my_id, mine));
                }
                self.state = State::ChapResponse;
                Ok(Step::Send(self.request(SECURITY, OPERATIONAL, true, &out)))
            }
            State::ChapResponse => {
                if let (Some(m), Some((alg, id, challenge))) =
                    (&self.p.mutual, &self.mutual_challenge)
                {
                    let name_ok = text::get(&keys, "CHAP_N") == Some(m.user.as_str());
                    let expect = chap::response(*alg, *id, m.secret.as_bytes(), challenge);
                    let got = text::get(&keys, "CHAP_R").and_then(text::decode_binary);
                    if !name_ok || !got.is_some_and(|g| chap::same(&g, &expect)) {
                        return Err(LoginError::MutualChapFailed);
                    }
                    // Checked once.
                    self.mutual_challenge = None;
                }
                if transit && nsg == OPERATIONAL {
                    Ok(Step::Send(self.operational()))
                } else {
                    Ok(Step::Send(self.request(SECURITY, OPERATIONAL, true, &[])))
                }
            }
            State::Operational => {
                if transit && nsg == FULL_FEATURE {
                    self.state = State::Done;
                    return Ok(Step::Done(self.negotiated(r, keys)?));
                }
                // Not done: answer whatever the target offered of its own
                // (RFC 7143 6.2), along with asking to go on.
                let ours: Vec<(String, String)> = self
                    .identity_keys()
                    .into_iter()
                    .chain(self.operational_keys())
                    .collect();
                let ours: Vec<&str> = ours.iter().map(|(k, _)| k.as_str()).collect();
                let answers = text::answers_to(&keys, &ours);
                Ok(Step::Send(self.request(
                    OPERATIONAL,
                    FULL_FEATURE,
                    true,
                    &answers,
                )))
            }
            State::Done => Err(protocol("Login Response after the login completed")),
        }
    }

    fn negotiated(&self, r: &Pdu, keys: Vec<(String, String)>) -> Result<Negotiated, LoginError> {
        let yes = |k: &str, default: bool| match text::get(&keys, k) {
            Some("Yes") => true,
            Some("No") => false,
            _ => default,
        };
        let num = |k: &str, default: u32| {
            text::get(&keys, k)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        // A length key outside its range fails the login (RFC 7143 6.2:
        // an out-of-range answer ends the negotiation); a word (say
        // FirstBurstLength=Irrelevant) leaves the default.
        let length = |k: &str, default: u32| match text::get(&keys, k) {
            Some(v) => match v.parse::<u64>() {
                Ok(n) => u32::try_from(n)
                    .ok()
                    .filter(|n| LENGTH_KEY_RANGE.contains(n))
                    .ok_or_else(|| {
                        protocol(format!(
                            "{k}={v} is out of range ({} to {}, RFC 7143 13)",
                            LENGTH_KEY_RANGE.start(),
                            LENGTH_KEY_RANGE.end()
                        ))
                    }),
                Err(_) => Ok(default),
            },
            None => Ok(default),
        };
        let crc = |k: &str| text::get(&keys, k) == Some("CRC32C");
        let normal = self.p.target_name.is_some();
        Ok(Negotiated {
            digests: Digests {
                header: crc("HeaderDigest"),
                data: crc("DataDigest"),
            },
            max_xmit_data_segment_length: length("MaxRecvDataSegmentLength", DEFAULT_MRDSL)?,
            max_recv_data_segment_length: self.p.max_recv_data_segment_length,
            // Not offered back: the target accepted ours (RFC 7143 6.2).
            max_burst_length: length(
                "MaxBurstLength",
                if normal {
                    self.p.max_burst_length
                } else {
                    262144
                },
            )?,
            first_burst_length: length(
                "FirstBurstLength",
                if normal {
                    self.p.first_burst_length
                } else {
                    65536
                },
            )?,
            initial_r2t: yes("InitialR2T", true),
            immediate_data: yes("ImmediateData", true),
            max_outstanding_r2t: num("MaxOutstandingR2T", 1).max(1),
            data_pdu_in_order: yes("DataPDUInOrder", true),
            data_sequence_in_order: yes("DataSequenceInOrder", true),
            default_time2wait: num("DefaultTime2Wait", 2),
            default_time2retain: num("DefaultTime2Retain", 20),
            tsih: r.header::<bhs::LoginResponse>().tsih.to_native(),
            cmd_sn: self.p.initial_cmd_sn,
            exp_cmd_sn: r.exp_cmd_sn(),
            max_cmd_sn: r.max_cmd_sn(),
            exp_stat_sn: self.exp_stat_sn,
            chap: self.chap_used,
            target_keys: keys,
        })
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;

    fn params(chap: bool, mutual: bool) -> LoginParams {
        LoginParams {
            initiator_name: "iqn.2026-11.test:init".into(),
            target_name: Some("iqn.2026-11.test:tgt".into()),
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            chap: chap.then(|| Credentials {
                user: "u".into(),
                secret: "secret12345678".into(),
            }),
            mutual: mutual.then(|| Credentials {
                user: "tgt".into(),
                secret: "tsecret1234567".into(),
            }),
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 262144,
            max_burst_length: 1 << 20,
            first_burst_length: 65536,
            initial_cmd_sn: 1,
            chap_offer: chap::Offer::ALL,
        }
    }

    /// A scripted target's Login Response.
    fn resp(transit: bool, csg: u8, nsg: u8, keys: &[(&str, &str)], stat_sn: u32) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginResponse);
        p.set_flags(if transit {
            0x80 | (csg << 2) | nsg
        } else {
            csg << 2
        });
        p.set_u16(14, 0x0123);
        p.set_u32(24, stat_sn);
        p.set_u32(28, 1);
        p.set_u32(32, 64);
        p.data = text::encode(keys);
        p
    }

    fn keys_of(p: &Pdu) -> Vec<(String, String)> {
        text::parse(&p.data)
    }

    #[test]
    fn offers_of_the_target_during_login_are_answered_and_its_answers_are_not() {
        let mut l = Login::new(params(false, false));
        l.start();
        let Step::Send(_) = l
            .receive(&resp(true, 0, 1, &[("AuthMethod", "None")], 5))
            .unwrap()
        else {
            panic!()
        };
        // No transit yet: answers to our keys, a declaration, and two
        // offers of its own.
        let more = resp(
            false,
            1,
            0,
            &[
                ("InitialR2T", "Yes"),
                ("MaxBurstLength", "262144"),
                ("TargetPortalGroupTag", "1"),
                ("OFMarker", "Yes"),
                ("X-com.example.Tuning", "7"),
            ],
            6,
        );
        let Step::Send(next) = l.receive(&more).unwrap() else {
            panic!()
        };
        assert_eq!(next.flags(), 0x87); // T, CSG 1, NSG 3: go on
        assert_eq!(
            keys_of(&next),
            vec![
                ("OFMarker".to_string(), "Reject".to_string()),
                (
                    "X-com.example.Tuning".to_string(),
                    "NotUnderstood".to_string()
                ),
            ]
        );
        // Nothing offered: an empty request, as before.
        let Step::Send(again) = l
            .receive(&resp(false, 1, 0, &[("DataDigest", "None")], 7))
            .unwrap()
        else {
            panic!()
        };
        assert!(again.data.is_empty());
    }

    /// Log in without authentication; the target's last Login Response
    /// carries `keys`.
    fn login_ending_with(keys: &[(&str, &str)]) -> Result<Step, LoginError> {
        let mut l = Login::new(params(false, false));
        l.start();
        l.receive(&resp(true, 0, 1, &[("AuthMethod", "None")], 5))?;
        l.receive(&resp(true, 1, 3, keys, 6))
    }

    fn negotiated_with(keys: &[(&str, &str)]) -> Negotiated {
        match login_ending_with(keys) {
            Ok(Step::Done(n)) => n,
            Ok(Step::Send(_)) => panic!("login not done"),
            Err(e) => panic!("login failed: {e}"),
        }
    }

    #[test]
    fn length_keys_at_the_top_of_their_range_are_taken() {
        let n = negotiated_with(&[
            ("MaxRecvDataSegmentLength", "16777215"),
            ("MaxBurstLength", "16777215"),
            ("FirstBurstLength", "16777215"),
        ]);
        assert_eq!(n.max_xmit_data_segment_length, 16_777_215);
        assert_eq!(n.max_burst_length, 16_777_215);
        assert_eq!(n.first_burst_length, 16_777_215);
    }

    #[test]
    fn length_keys_at_the_bottom_of_their_range_are_taken() {
        let n = negotiated_with(&[
            ("MaxRecvDataSegmentLength", "512"),
            ("MaxBurstLength", "512"),
            ("FirstBurstLength", "512"),
        ]);
        assert_eq!(n.max_xmit_data_segment_length, 512);
        assert_eq!(n.max_burst_length, 512);
        assert_eq!(n.first_burst_length, 512);
    }

    #[test]
    fn a_length_key_of_two_to_the_24_fails_the_login() {
        for key in [
            "MaxRecvDataSegmentLength",
            "MaxBurstLength",
            "FirstBurstLength",
        ] {
            let r = login_ending_with(&[(key, "16777216")]);
            assert!(matches!(r, Err(LoginError::Protocol(_))), "{key}");
        }
    }

    #[test]
    fn a_length_key_below_512_fails_the_login() {
        for key in [
            "MaxRecvDataSegmentLength",
            "MaxBurstLength",
            "FirstBurstLength",
        ] {
            let r = login_ending_with(&[(key, "511")]);
            assert!(matches!(r, Err(LoginError::Protocol(_))), "{key}");
        }
    }

    #[test]
    fn an_irrelevant_first_burst_length_keeps_the_default() {
        // RFC 7143 13.14: Irrelevant with InitialR2T=Yes and ImmediateData=No.
        let n = negotiated_with(&[
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("FirstBurstLength", "Irrelevant"),
        ]);
        assert_eq!(n.first_burst_length, 65536); // ours, from params()
    }

    #[test]
    fn login_without_auth_goes_security_operational_full_feature() {
        let mut l = Login::new(params(false, false));
        let first = l.start();
        assert_eq!(first.bhs[0], 0x43); // immediate Login Request
        assert_eq!(first.flags(), 0x81); // T, CSG 0, NSG 1
        assert_eq!(text::get(&keys_of(&first), "AuthMethod"), Some("None"));
        let Step::Send(op) = l
            .receive(&resp(true, 0, 1, &[("AuthMethod", "None")], 5))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(op.flags(), 0x87); // T, CSG 1, NSG 3
        assert_eq!(op.u32_at(28), 6); // ExpStatSN
        assert_eq!(text::get(&keys_of(&op), "InitialR2T"), Some("No"));
        let fin = resp(
            true,
            1,
            3,
            &[
                ("MaxRecvDataSegmentLength", "8192"),
                ("InitialR2T", "Yes"),
                ("FirstBurstLength", "65536"),
                ("MaxBurstLength", "262144"),
            ],
            6,
        );
        let Step::Done(n) = l.receive(&fin).unwrap() else {
            panic!()
        };
        assert_eq!(n.max_xmit_data_segment_length, 8192);
        assert!(n.initial_r2t);
        assert_eq!(n.max_burst_length, 262144);
        assert_eq!(n.tsih, 0x0123);
        assert_eq!(n.exp_stat_sn, 7);
        assert_eq!(n.max_cmd_sn, 64);
    }

    /// Start `l`, have the target ask for CHAP: the CHAP_A list we offer.
    fn chap_offered(l: &mut Login) -> String {
        l.start();
        let Step::Send(a) = l
            .receive(&resp(false, 0, 0, &[("AuthMethod", "CHAP")], 1))
            .unwrap()
        else {
            panic!("no CHAP_A sent")
        };
        text::get(&keys_of(&a), "CHAP_A")
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn mutual_chap_answers_the_challenge_and_checks_the_target() {
        let mut l = Login::new(params(true, true));
        assert_eq!(chap_offered(&mut l), "7,6,5");
        let Step::Send(r) = l
            .receive(&resp(
                false,
                0,
                0,
                &[
                    ("CHAP_A", "5"),
                    ("CHAP_I", "9"),
                    ("CHAP_C", "0x0102030405060708"),
                ],
                2,
            ))
            .unwrap()
        else {
            panic!()
        };
        let k = keys_of(&r);
        let expect = chap::response(
            Algorithm::Md5,
            9,
            b"secret12345678",
            &[1, 2, 3, 4, 5, 6, 7, 8],
        );
        assert_eq!(
            text::get(&k, "CHAP_R"),
            Some(text::encode_hex(&expect).as_str())
        );
        assert_eq!(text::get(&k, "CHAP_N"), Some("u"));
        // The target proves itself with our challenge.
        let id: u8 = text::get(&k, "CHAP_I").unwrap().parse().unwrap();
        let c = text::decode_binary(text::get(&k, "CHAP_C").unwrap()).unwrap();
        let good = text::encode_hex(&chap::response(Algorithm::Md5, id, b"tsecret1234567", &c));
        let ok = l.receive(&resp(
            true,
            0,
            1,
            &[("CHAP_N", "tgt"), ("CHAP_R", &good)],
            3,
        ));
        // Accepted: on to the operational stage.
        let Ok(Step::Send(op)) = ok else {
            panic!("mutual CHAP rejected")
        };
        assert_eq!(op.flags(), 0x87);
    }

    #[test]
    fn chap_takes_only_an_allowed_algorithm_and_reports_the_one_used() {
        let mut p = params(true, false);
        p.chap_offer = chap::Offer::parse("sha256:sha1").unwrap();
        let challenge = [("CHAP_I", "3"), ("CHAP_C", "0x0a0b0c0d")];
        // A target answering with MD5, which we did not offer, is refused.
        let mut l = Login::new(p.clone());
        assert_eq!(chap_offered(&mut l), "7,6");
        let md5 = [&[("CHAP_A", "5")][..], &challenge].concat();
        assert_eq!(
            l.receive(&resp(false, 0, 0, &md5, 2)).err(),
            Some(LoginError::ChapAlgorithmNotAllowed {
                chosen: Algorithm::Md5,
                allowed: p.chap_offer,
            })
        );
        // SHA-1 is answered with SHA-1, and the session says so.
        let mut l = Login::new(p);
        l.start();
        l.receive(&resp(false, 0, 0, &[("AuthMethod", "CHAP")], 1))
            .unwrap();
        let sha1 = [&[("CHAP_A", "6")][..], &challenge].concat();
        let Step::Send(r) = l.receive(&resp(false, 0, 0, &sha1, 2)).unwrap() else {
            panic!()
        };
        let expect = chap::response(Algorithm::Sha1, 3, b"secret12345678", &[10, 11, 12, 13]);
        assert_eq!(
            text::get(&keys_of(&r), "CHAP_R"),
            Some(text::encode_hex(&expect).as_str())
        );
        l.receive(&resp(true, 0, 1, &[], 3)).unwrap();
        let Step::Done(n) = l.receive(&resp(true, 1, 3, &[], 4)).unwrap() else {
            panic!("login not done")
        };
        assert_eq!(n.chap, Some(Algorithm::Sha1));
    }

    #[test]
    fn a_chap_challenge_with_a_multibyte_character_is_a_protocol_error() {
        let mut l = Login::new(params(true, false));
        chap_offered(&mut l);
        // CHAP_C: "0x", 'a', U+20AC (3 bytes).
        let challenge = [("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0xa\u{20ac}")];
        assert_eq!(
            l.receive(&resp(false, 0, 0, &challenge, 2)).err(),
            Some(LoginError::Protocol("bad CHAP_C".into()))
        );
    }

    #[test]
    fn a_mutual_chap_response_with_a_multibyte_character_fails_authentication() {
        let mut l = Login::new(params(true, true));
        chap_offered(&mut l);
        let challenge = [("CHAP_A", "5"), ("CHAP_I", "9"), ("CHAP_C", "0x0102")];
        l.receive(&resp(false, 0, 0, &challenge, 2)).unwrap();
        // CHAP_R: "0x", U+20AC (3 bytes), 'f'.
        let answer = [("CHAP_N", "tgt"), ("CHAP_R", "0x\u{20ac}f")];
        assert_eq!(
            l.receive(&resp(true, 0, 1, &answer, 3)).err(),
            Some(LoginError::MutualChapFailed)
        );
    }

    #[test]
    fn mutual_chap_with_a_wrong_target_response_fails() {
        let mut l = Login::new(params(true, true));
        l.start();
        l.receive(&resp(false, 0, 0, &[("AuthMethod", "CHAP")], 1))
            .unwrap();
        l.receive(&resp(
            false,
            0,
            0,
            &[("CHAP_A", "5"), ("CHAP_I", "9"), ("CHAP_C", "0x0102")],
            2,
        ))
        .unwrap();
        let r = l.receive(&resp(
            true,
            0,
            1,
            &[
                ("CHAP_N", "tgt"),
                ("CHAP_R", "0x00112233445566778899aabbccddeeff"),
            ],
            3,
        ));
        assert_eq!(r.err(), Some(LoginError::MutualChapFailed));
    }

    #[test]
    fn login_parameters_print_no_secret() {
        let shown = format!("{:?}", params(true, true));
        assert!(!shown.contains("secret12345678"), "{shown}");
        assert!(!shown.contains("tsecret1234567"), "{shown}");
    }

    #[test]
    fn only_target_errors_are_worth_another_portal() {
        let busy = LoginError::TargetError {
            class: 3,
            detail: 1,
        };
        assert!(busy.is_transient());
        assert_eq!(
            busy.to_string(),
            "Login failed: the target's service is unavailable (0x03/0x01)"
        );
        for refused in [
            LoginError::AuthenticationFailed,
            LoginError::Forbidden,
            LoginError::TargetNotFound,
            LoginError::TargetRemoved,
            LoginError::InitiatorError(7),
            LoginError::TargetError {
                class: 9,
                detail: 0,
            },
        ] {
            assert!(!refused.is_transient(), "{refused}");
        }
    }

    #[test]
    fn login_failures_map_to_their_class() {
        for (class, detail, err) in [
            (2u8, 1u8, LoginError::AuthenticationFailed),
            (2, 2, LoginError::Forbidden),
            (2, 3, LoginError::TargetNotFound),
            (
                3,
                1,
                LoginError::TargetError {
                    class: 3,
                    detail: 1,
                },
            ),
        ] {
            let mut l = Login::new(params(false, false));
            l.start();
            let mut r = resp(false, 0, 0, &[], 0);
            r.set_byte(36, class);
            r.set_byte(37, detail);
            assert_eq!(l.receive(&r).err(), Some(err));
        }
    }

    #[test]
    fn redirect_reports_the_new_address() {
        let mut l = Login::new(params(false, false));
        l.start();
        let mut r = resp(false, 0, 0, &[("TargetAddress", "10.0.0.2:3260,1")], 0);
        r.set_byte(36, 1);
        r.set_byte(37, 1);
        assert_eq!(
            l.receive(&r).err(),
            Some(LoginError::Redirect {
                address: "10.0.0.2:3260,1".into(),
                permanent: false
            })
        );
    }

    #[test]
    fn target_demanding_chap_without_credentials_is_a_clear_error() {
        let mut l = Login::new(params(false, false));
        l.start();
        assert_eq!(
            l.receive(&resp(false, 0, 0, &[("AuthMethod", "CHAP")], 0))
                .err(),
            Some(LoginError::ChapRequired)
        );
    }

    #[test]
    fn digests_are_offered_and_taken_from_the_answer() {
        let mut p = params(false, false);
        p.header_digest = true;
        p.data_digest = true;
        let mut l = Login::new(p);
        l.start();
        let Step::Send(op) = l.receive(&resp(true, 0, 1, &[], 1)).unwrap() else {
            panic!()
        };
        assert_eq!(
            text::get(&keys_of(&op), "HeaderDigest"),
            Some("CRC32C,None")
        );
        let Step::Done(n) = l
            .receive(&resp(
                true,
                1,
                3,
                &[("HeaderDigest", "CRC32C"), ("DataDigest", "None")],
                2,
            ))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            n.digests,
            Digests {
                header: true,
                data: false
            }
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary Login Responses end in a step or an error, never a
            /// panic, with or without CHAP (mutual).
            #[test]
            fn receive_never_panics(
                responses in proptest::collection::vec(
                    (proptest::collection::vec(any::<u8>(), 48), proptest::collection::vec(any::<u8>(), 0..200), any::<bool>()),
                    1..8),
                chap in any::<bool>(),
                keys in proptest::collection::vec("(AuthMethod|CHAP_A|CHAP_I|CHAP_C|CHAP_N|CHAP_R|TargetAddress|MaxRecvDataSegmentLength)=[0-9A-Za-z,x]{0,12}", 0..6),
            ) {
                let mut l = Login::new(params(chap, chap));
                let _ = l.start();
                for (bhs, raw, use_keys) in responses {
                    let mut r = Pdu::new(Opcode::LoginResponse);
                    r.bhs[1..].copy_from_slice(&bhs[1..]);
                    r.data = if use_keys {
                        let mut d = Vec::new();
                        for k in &keys {
                            d.extend_from_slice(k.as_bytes());
                            d.push(0);
                        }
                        d
                    } else {
                        raw
                    };
                    match l.receive(&r) {
                        Ok(Step::Send(_)) => {}
                        Ok(Step::Done(_)) | Err(_) => break,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod fallback_tests {
    use super::*;

    #[test]
    fn misc_initiator_error_during_chap_setup_asks_for_a_shorter_offer() {
        let mut p = LoginParams {
            initiator_name: "iqn.2026-11.test:i".into(),
            target_name: Some("iqn.2026-11.test:t".into()),
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            chap: Some(Credentials {
                user: "u".into(),
                secret: "s".into(),
            }),
            mutual: None,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
            max_burst_length: 262144,
            first_burst_length: 65536,
            initial_cmd_sn: 1,
            chap_offer: chap::Offer::ALL,
        };
        let mut l = Login::new(p.clone());
        l.start();
        let mut chap = Pdu::new(Opcode::LoginResponse);
        chap.data = text::encode(&[("AuthMethod", "CHAP")]);
        l.receive(&chap).unwrap();
        let mut fail = Pdu::new(Opcode::LoginResponse);
        fail.set_byte(36, 2);
        assert_eq!(
            l.receive(&fail).err(),
            Some(LoginError::ChapAlgorithmsRefused(chap::Offer::ALL))
        );
        // The last offer refused in answer to CHAP_A is refused too...
        let md5 = chap::Offer::parse("md5").unwrap();
        p.chap_offer = md5;
        let mut l = Login::new(p.clone());
        l.start();
        l.receive(&chap).unwrap();
        assert_eq!(
            l.receive(&fail).err(),
            Some(LoginError::ChapAlgorithmsRefused(md5))
        );
        // ...but after our response it is just an initiator error.
        let mut l = Login::new(p);
        l.start();
        l.receive(&chap).unwrap();
        let mut challenge = Pdu::new(Opcode::LoginResponse);
        challenge.data = text::encode(&[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x01")]);
        l.receive(&challenge).unwrap();
        assert_eq!(l.receive(&fail).err(), Some(LoginError::InitiatorError(0)));
    }
}
