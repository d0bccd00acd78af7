// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! MODE SENSE / MODE SELECT (SPC-4 6.11-6.14) and the mode pages we keep:
//! read-write error recovery (01h), caching (08h), control (0Ah) and
//! informational exceptions control (1Ch). WCE and D_SENSE are changeable;
//! nothing is saveable.

use super::cdb::{be16_at, be32_at};
use super::command::{Ctx, Failure, Outcome, Response};
use super::lu::LogicalUnit;
use super::sense::Sense;

/// Page control field values (SPC-4 6.11.1, table 99).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

const PAGE_RW_ERROR_RECOVERY: u8 = 0x01;
const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0a;
const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1c;
const ALL_PAGES: u8 = 0x3f;
const PAGES: [u8; 4] = [
    PAGE_RW_ERROR_RECOVERY,
    PAGE_CACHING,
    PAGE_CONTROL,
    PAGE_INFORMATIONAL_EXCEPTIONS,
];

/// One mode page (header included) as the given page control asks for.
fn page(lu: &LogicalUnit, code: u8, pc: PageControl) -> Vec<u8> {
    let changeable = pc == PageControl::Changeable;
    match code {
        // SBC-3 6.4.7: AWRE/ARRE not changeable, everything zero is fine.
        PAGE_RW_ERROR_RECOVERY => {
            let mut p = vec![0u8; 12];
            p[0] = code;
            p[1] = 0x0a;
            p
        }
        // SBC-3 6.4.5: WCE is bit 2 of byte 2.
        PAGE_CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = code;
            p[1] = 0x12;
            let wce = match pc {
                PageControl::Current => lu.write_cache(),
                PageControl::Changeable | PageControl::Default => true,
            };
            if wce {
                p[2] |= 0x04;
            }
            p
        }
        // SPC-4 7.5.8: D_SENSE is bit 2 of byte 2; QUEUE ALGORITHM MODIFIER 1
        // (unrestricted reordering) in byte 3 bits 7-4.
        PAGE_CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = code;
            p[1] = 0x0a;
            if changeable {
                p[2] = 0x04;
            } else {
                if pc == PageControl::Current && lu.descriptor_sense() {
                    p[2] |= 0x04;
                }
                p[3] = 0x10;
                // Busy timeout period: unlimited (FFFFh).
                p[8] = 0xff;
                p[9] = 0xff;
            }
            p
        }
        // SPC-4 7.5.12: DEXCPT=1 (exceptions reporting disabled), MRIE 0.
        PAGE_INFORMATIONAL_EXCEPTIONS => {
            let mut p = vec![0u8; 12];
            p[0] = code;
            p[1] = 0x0a;
            if !changeable {
                p[2] = 0x08;
            }
            p
        }
        _ => Vec::new(),
    }
}

pub(crate) fn mode_sense(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let ten = ctx.cdb.opcode() == 0x5a;
    let dbd = ctx.cdb.bit(1, 3);
    let llbaa = ten && ctx.cdb.bit(1, 4);
    let pc = match ctx.cdb.byte(2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        // Saved values are not implemented (SPC-4 6.11.1).
        _ => return Err(Sense::SAVING_PARAMETERS_NOT_SUPPORTED.into()),
    };
    let code = ctx.cdb.byte(2) & 0x3f;
    let subpage = ctx.cdb.byte(3);
    let alloc = if ten {
        usize::from(ctx.cdb.be16(7))
    } else {
        usize::from(ctx.cdb.byte(4))
    };
    // Subpage 00h for one page; FFh (all subpages) with page 3Fh.
    if !(subpage == 0 || (subpage == 0xff && code == ALL_PAGES)) {
        return Err(Sense::invalid_cdb_field(3, None).into());
    }
    let mut pages = Vec::new();
    if code == ALL_PAGES {
        for c in PAGES {
            pages.extend(page(lu, c, pc));
        }
    } else if PAGES.contains(&code) {
        pages = page(lu, code, pc);
    } else {
        return Err(Sense::invalid_cdb_field(2, Some(5)).into());
    }

    let blocks = lu.blocks();
    let bs = lu.block_size();
    let block_desc: Vec<u8> = if dbd {
        Vec::new()
    } else if llbaa {
        // Long LBA block descriptor (SPC-4 7.5.6.3).
        let mut b = blocks.to_be_bytes().to_vec();
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&bs.to_be_bytes());
        b
    } else {
        // Short block descriptor (SBC-3 6.4.2): blocks capped at FFFFFFh... the
        // direct-access format has a 4-byte NUMBER OF LOGICAL BLOCKS.
        let n = u32::try_from(blocks).unwrap_or(u32::MAX);
        let mut b = n.to_be_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&bs.to_be_bytes()[1..4]);
        b
    };
    // Device-specific parameter: WP (bit 7), DPOFUA (bit 4).
    let dsp = if lu.read_only() { 0x80 } else { 0 } | 0x10;
    let mut d = Vec::new();
    if ten {
        let len = (6 + block_desc.len() + pages.len()) as u16;
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&[0, dsp, u8::from(llbaa && !dbd), 0]);
        d.extend_from_slice(&(block_desc.len() as u16).to_be_bytes());
    } else {
        let len = 3 + block_desc.len() + pages.len();
        d.extend_from_slice(&[len.min(255) as u8, 0, dsp, block_desc.len() as u8]);
    }
    d.extend_from_slice(&block_desc);
    d.extend_from_slice(&pages);
    d.truncate(alloc);
    Ok(Outcome::Done(Response::good(d)))
}

pub(crate) fn mode_select(lu: &LogicalUnit, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let ten = ctx.cdb.opcode() == 0x55;
    if ctx.cdb.bit(1, 0) {
        // SP=1: saving pages is not supported (SPC-4 6.13).
        return Err(Sense::invalid_cdb_field(1, Some(0)).into());
    }
    if !ctx.cdb.bit(1, 4) {
        // PF=0 means vendor-specific page format, which we do not have.
        return Err(Sense::invalid_cdb_field(1, Some(4)).into());
    }
    let len = if ten {
        usize::from(ctx.cdb.be16(7))
    } else {
        usize::from(ctx.cdb.byte(4))
    };
    if len == 0 {
        return Ok(Outcome::Done(Response::good(Vec::new())));
    }
    if len > ctx.data_out.len() {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
    }
    let mut p = vec![0u8; len];
    ctx.data_out
        .read_at(0, &mut p)
        .map_err(|_| Sense::PARAMETER_LIST_LENGTH_ERROR)?;
    let hdr = if ten { 8 } else { 4 };
    if len < hdr {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
    }
    let bd_len = if ten {
        usize::from(be16_at(&p, 6))
    } else {
        usize::from(p[3])
    };
    let long = ten && p[4] & 0x01 != 0;
    let desc_size = if long { 16 } else { 8 };
    if bd_len % desc_size != 0 || hdr + bd_len > len {
        return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
    }
    // A block descriptor may only restate the current block length.
    for i in (hdr..hdr + bd_len).step_by(desc_size) {
        let block_len = if long {
            be32_at(&p, i + 12)
        } else {
            be32_at(&p, i + 4) & 0x00ff_ffff
        };
        if block_len != lu.block_size() {
            let at = if long { i + 12 } else { i + 5 };
            return Err(Sense::invalid_param_field(at as u16, None).into());
        }
    }
    // Validate every page before applying any (SPC-4 6.13: all or nothing).
    let mut new_wce = lu.write_cache();
    let mut new_dsense = lu.descriptor_sense();
    let mut i = hdr + bd_len;
    while i < len {
        let code = p[i] & 0x3f;
        if p[i] & 0x40 != 0 {
            // SPF: no subpages are supported.
            return Err(Sense::invalid_param_field(i as u16, Some(6)).into());
        }
        let plen = usize::from(*p.get(i + 1).ok_or(Sense::PARAMETER_LIST_LENGTH_ERROR)?);
        let end = i + 2 + plen;
        if end > len {
            return Err(Sense::PARAMETER_LIST_LENGTH_ERROR.into());
        }
        if !PAGES.contains(&code) {
            return Err(Sense::invalid_param_field(i as u16, Some(5)).into());
        }
        let current = page(lu, code, PageControl::Current);
        let changeable = page(lu, code, PageControl::Changeable);
        if plen + 2 != current.len() {
            return Err(Sense::invalid_param_field((i + 1) as u16, None).into());
        }
        // Byte 0 PS bit is reserved in MODE SELECT; compare from byte 2.
        for j in 2..current.len() {
            let diff = (p[i + j] ^ current[j]) & !changeable[j];
            if diff != 0 {
                let bit = 7 - diff.leading_zeros() as u8;
                return Err(Sense::invalid_param_field((i + j) as u16, Some(bit)).into());
            }
        }
        match code {
            PAGE_CACHING => new_wce = p[i + 2] & 0x04 != 0,
            PAGE_CONTROL => new_dsense = p[i + 2] & 0x04 != 0,
            _ => {}
        }
        i = end;
    }
    let changed = lu.set_mode_bits(new_wce, new_dsense);
    if changed {
        // SPC-4 6.13: other nexuses learn of the change by a unit attention.
        lu.establish_ua_all(Sense::MODE_PARAMETERS_CHANGED, Some(ctx.nexus.id));
        if !new_wce {
            // Turning the write cache off: what it held must be on the medium.
            lu.flush()
                .map_err(|e| lu.io_error_sense(super::IoKind::Flush, 0, &e))?;
        }
    }
    Ok(Outcome::Done(Response::good(Vec::new())))
}
