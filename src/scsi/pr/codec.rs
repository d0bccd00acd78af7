// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! PERSISTENT RESERVE OUT parameter lists, PERSISTENT RESERVE IN data, and
//! iSCSI TransportIDs (SPC-4 6.15, 6.16, 7.6.4.6).

#![deny(clippy::indexing_slicing, clippy::string_slice)]

use super::{PrState, PrType};
use crate::scsi::cdb::{be16_at, be32_at, be64_at, byte_at};
use crate::scsi::sense::Sense;

/// SPC-4 7.6.4.1: protocol identifier of iSCSI.
const PROTOCOL_ISCSI: u8 = 0x5;
/// Basic PERSISTENT RESERVE OUT parameter list length (SPC-4 6.16.3).
pub const BASIC_PARAM_LEN: usize = 24;

/// PERSISTENT RESERVE OUT service actions, the SERVICE ACTION field of the
/// CDB (byte 1, bits 4-0; SPC-4 6.16.2, table 214).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ProutAction {
    Register = 0x00,
    Reserve = 0x01,
    Release = 0x02,
    Clear = 0x03,
    Preempt = 0x04,
    PreemptAndAbort = 0x05,
    RegisterAndIgnoreExistingKey = 0x06,
    RegisterAndMove = 0x07,
}

/// A SERVICE ACTION value that SPC-4 table 214 does not define.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Unknown PERSISTENT RESERVE OUT service action {0:#04x}")]
pub struct UnknownProutAction(pub u8);

impl TryFrom<u8> for ProutAction {
    type Error = UnknownProutAction;

    fn try_from(v: u8) -> Result<ProutAction, UnknownProutAction> {
        Ok(match v {
            0x00 => ProutAction::Register,
            0x01 => ProutAction::Reserve,
            0x02 => ProutAction::Release,
            0x03 => ProutAction::Clear,
            0x04 => ProutAction::Preempt,
            0x05 => ProutAction::PreemptAndAbort,
            0x06 => ProutAction::RegisterAndIgnoreExistingKey,
            0x07 => ProutAction::RegisterAndMove,
            _ => return Err(UnknownProutAction(v)),
        })
    }
}

impl ProutAction {
    /// REGISTER or REGISTER AND IGNORE EXISTING KEY: the service actions
    /// that register the nexus with the SERVICE ACTION RESERVATION KEY.
    pub fn registers(self) -> bool {
        matches!(
            self,
            ProutAction::Register | ProutAction::RegisterAndIgnoreExistingKey
        )
    }
}

/// A decoded PERSISTENT RESERVE OUT parameter list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProutParams {
    pub key: u64,
    pub sa_key: u64,
    pub spec_i_pt: bool,
    pub all_tg_pt: bool,
    pub aptpl: bool,
    /// Initiator names from SPEC_I_PT TransportIDs.
    pub transport_ids: Vec<String>,
    /// REGISTER AND MOVE: unregister the source nexus.
    pub unreg: bool,
    /// REGISTER AND MOVE: destination relative target port and initiator.
    pub move_port: u16,
    pub move_initiator: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportIdError {
    /// Not long enough, or a length that does not fit.
    Length,
    /// A protocol other than iSCSI, or an unknown format code.
    Unsupported,
    /// The name is not printable ASCII.
    BadName,
}

/// Parse one iSCSI TransportID at the start of `b`; returns the initiator
/// name (without any ISID part) and the bytes consumed.
pub fn parse_transport_id(b: &[u8]) -> Result<(String, usize), TransportIdError> {
    let Some(&[b0, ..]) = b.first_chunk::<4>() else {
        return Err(TransportIdError::Length);
    };
    let format = b0 >> 6;
    if b0 & 0x0f != PROTOCOL_ISCSI || format > 1 {
        return Err(TransportIdError::Unsupported);
    }
    let len = usize::from(be16_at(b, 2));
    let total = 4 + len;
    if len < 4 || len % 4 != 0 {
        return Err(TransportIdError::Length);
    }
    let body = b.get(4..total).ok_or(TransportIdError::Length)?;
    // The name ends at its NUL terminator (or with the body).
    let name = body.split(|&c| c == 0).next().unwrap_or_default();
    let name = std::str::from_utf8(name).map_err(|_| TransportIdError::BadName)?;
    // Format 01b: "name,i,0xISID" (SPC-4 table 388).
    let name = match name
        .split_once(",i,0x")
        .or_else(|| name.split_once(",I,0X"))
    {
        Some((n, _)) if format == 1 => n,
        _ => name,
    };
    if name.is_empty() || !name.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(TransportIdError::BadName);
    }
    Ok((name.to_ascii_lowercase(), total))
}

/// Encode an iSCSI TransportID (format 00b): the name, NUL-terminated,
/// padded to a multiple of 4, at least 20 bytes (SPC-4 7.6.4.6).
pub fn encode_transport_id(name: &str) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    while body.len() % 4 != 0 || body.len() < 20 {
        body.push(0);
    }
    let mut t = vec![PROTOCOL_ISCSI, 0];
    t.extend_from_slice(&(body.len() as u16).to_be_bytes());
    t.extend_from_slice(&body);
    t
}

fn transport_id_sense(at: usize, e: TransportIdError) -> Sense {
    match e {
        TransportIdError::Length => Sense::PARAMETER_LIST_LENGTH_ERROR,
        TransportIdError::Unsupported | TransportIdError::BadName => {
            Sense::invalid_param_field(at as u16, None)
        }
    }
}

/// Decode the fields of the parameter list of service action `sa` that
/// come before any TransportID: the basic parameter list (SPC-4 6.16.3,
/// table 216) or that of REGISTER AND MOVE (6.16.4, table 220). Only a list
/// shorter than 24 bytes is refused; [`parse_prout`] checks the rest.
pub fn parse_prout_header(sa: ProutAction, p: &[u8]) -> Result<ProutParams, Sense> {
    if p.len() < BASIC_PARAM_LEN {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    let mut out = ProutParams {
        key: be64_at(p, 0),
        sa_key: be64_at(p, 8),
        ..ProutParams::default()
    };
    if sa == ProutAction::RegisterAndMove {
        out.unreg = byte_at(p, 17) & 0x02 != 0;
        out.aptpl = byte_at(p, 17) & 0x01 != 0;
        out.move_port = be16_at(p, 18);
        return Ok(out);
    }
    let flags = byte_at(p, 20);
    out.spec_i_pt = flags & 0x08 != 0;
    if sa.registers() {
        out.all_tg_pt = flags & 0x04 != 0;
        out.aptpl = flags & 0x01 != 0;
    }
    Ok(out)
}

/// Decode the parameter list of service action `sa` (SPC-4 6.16.3/6.16.4).
pub fn parse_prout(sa: ProutAction, p: &[u8]) -> Result<ProutParams, Sense> {
    let mut out = parse_prout_header(sa, p)?;
    if sa == ProutAction::RegisterAndMove {
        let tid_len = be32_at(p, 20) as usize;
        if tid_len == 0 || p.len() != BASIC_PARAM_LEN + tid_len {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let tid = p.get(BASIC_PARAM_LEN..).unwrap_or_default();
        let (name, used) = parse_transport_id(tid).map_err(|e| transport_id_sense(24, e))?;
        if used != tid_len {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        out.move_initiator = Some(name);
        return Ok(out);
    }
    if out.spec_i_pt {
        if sa != ProutAction::Register {
            return Err(Sense::invalid_param_field(20, Some(3)));
        }
        // TRANSPORTID PARAMETER DATA LENGTH, then the TransportIDs.
        let tid_len = be32_at(p, 24) as usize;
        if p.len() < 28 || p.len() != 28 + tid_len {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let mut at = 28;
        while at < p.len() {
            let tid = p.get(at..).unwrap_or_default();
            let (name, used) = parse_transport_id(tid).map_err(|e| transport_id_sense(at, e))?;
            out.transport_ids.push(name);
            at += used;
        }
    } else if p.len() != BASIC_PARAM_LEN {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR);
    }
    Ok(out)
}

/// PERSISTENT RESERVE IN data (SPC-4 6.15).
impl PrState {
    /// READ KEYS (SA 00h).
    pub fn read_keys(&self) -> Vec<u8> {
        let mut d = self.generation.to_be_bytes().to_vec();
        d.extend_from_slice(&((self.registrations.len() * 8) as u32).to_be_bytes());
        for r in &self.registrations {
            d.extend_from_slice(&r.key.to_be_bytes());
        }
        d
    }

    /// READ RESERVATION (SA 01h).
    pub fn read_reservation(&self) -> Vec<u8> {
        let mut d = self.generation.to_be_bytes().to_vec();
        match &self.reservation {
            None => d.extend_from_slice(&[0; 4]),
            Some(r) => {
                d.extend_from_slice(&16u32.to_be_bytes());
                // All-registrants reservations report key 0 (SPC-4 6.15.3.3).
                let key = if r.ty.all_registrants() {
                    0
                } else {
                    self.registration(&r.holder).map_or(0, |h| h.key)
                };
                d.extend_from_slice(&key.to_be_bytes());
                d.extend_from_slice(&[0; 4]); // obsolete
                d.push(0); // reserved
                d.push(r.ty as u8); // SCOPE 0 (LU), TYPE
                d.extend_from_slice(&[0; 2]); // obsolete
            }
        }
        d
    }

    /// REPORT CAPABILITIES (SA 02h): CRH, SIP_C, ATP_C, PTPL_C, TMV, every
    /// type; PTPL_A tells whether APTPL is active.
    pub fn report_capabilities(&self) -> Vec<u8> {
        vec![
            0,
            8,                                // LENGTH
            0x10 | 0x08 | 0x04 | 0x01,        // CRH, SIP_C, ATP_C, PTPL_C
            0x80 | u8::from(self.aptpl),      // TMV, PTPL_A
            0x80 | 0x40 | 0x20 | 0x08 | 0x02, // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
            0x01,                             // EX_AC_AR
            0,
            0,
        ]
    }

    /// READ FULL STATUS (SA 03h).
    pub fn read_full_status(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for r in &self.registrations {
            let holder = self.is_holder(&r.nexus)
                && self
                    .reservation
                    .as_ref()
                    .is_some_and(|res| res.ty.all_registrants() || r.matches(&res.holder));
            let tid = encode_transport_id(&r.nexus.initiator);
            body.extend_from_slice(&r.key.to_be_bytes());
            body.extend_from_slice(&[0; 4]);
            body.push((u8::from(r.all_tg_pt) << 1) | u8::from(holder));
            body.push(match (&self.reservation, holder) {
                (Some(res), true) => res.ty as u8,
                _ => 0,
            });
            body.extend_from_slice(&[0; 4]);
            let port = if r.all_tg_pt { 0 } else { r.nexus.port };
            body.extend_from_slice(&port.to_be_bytes());
            body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
            body.extend_from_slice(&tid);
        }
        let mut d = self.generation.to_be_bytes().to_vec();
        d.extend_from_slice(&(body.len() as u32).to_be_bytes());
        d.extend_from_slice(&body);
        d
    }
}

/// Decode the TYPE field of a PR OUT CDB (byte 2 bits 3-0; SCOPE in bits 7-4
/// must be LU_SCOPE 0h).
pub fn scope_type(b2: u8) -> Result<PrType, Sense> {
    if b2 >> 4 != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(7)));
    }
    PrType::from_u8(b2 & 0x0f).ok_or_else(|| Sense::invalid_cdb_field(2, Some(3)))
}
