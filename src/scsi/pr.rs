//! Reservations (SPC-4 5.13, 6.15, 6.16; SPC-2 RESERVE/RELEASE): the per-logical-unit
//! [`PrState`] shared by every I_T nexus, the PERSISTENT RESERVE OUT state machine, the
//! PERSISTENT RESERVE IN data, the conflict table applied to every command, and a versioned,
//! checksummed binary encoding of the persistent part for APTPL.
//!
//! Nothing here locks or performs I/O: the caller holds the LUN's state under its lock, and
//! after each reservation command drains [`PrState::take_effects`] to post unit attentions,
//! abort tasks and persist the state.

use super::datain::DataIn;
use super::opcodes::op;
use super::sense::{FieldPointer, SenseReason};

/// Most registrations one logical unit holds (more: INSUFFICIENT REGISTRATION RESOURCES).
pub const MAX_REGISTRATIONS: usize = 64;
/// Longest initiator or target name kept (iSCSI names are at most 223 bytes).
pub const MAX_NAME_LEN: usize = 223;
/// The PERSISTENT RESERVE OUT basic parameter list length.
pub const PROUT_PARAM_LEN: u32 = 24;
/// Largest REGISTER AND MOVE parameter list accepted.
pub const MAX_MOVE_PARAM_LEN: u32 = 24 + 4 + 4 + 256;

/// The identity of an I_T nexus: initiator port (iSCSI name + ISID) and target port (target
/// name + relative target port identifier).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct ItNexusId {
    /// iSCSI initiator name.
    pub initiator: String,
    /// Initiator session identifier.
    pub isid: [u8; 6],
    /// iSCSI target name.
    pub target: String,
    /// Relative target port identifier.
    pub rel_port: u16,
}

impl ItNexusId {
    fn same_initiator_port(&self, other: &Self) -> bool {
        self.isid == other.isid && self.initiator == other.initiator
    }
}

/// Persistent reservation types (SPC-4 table 170).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ReservationType {
    /// Write Exclusive.
    WriteExclusive = 1,
    /// Exclusive Access.
    ExclusiveAccess = 3,
    /// Write Exclusive - Registrants Only.
    WriteExclusiveRegistrantsOnly = 5,
    /// Exclusive Access - Registrants Only.
    ExclusiveAccessRegistrantsOnly = 6,
    /// Write Exclusive - All Registrants.
    WriteExclusiveAllRegistrants = 7,
    /// Exclusive Access - All Registrants.
    ExclusiveAccessAllRegistrants = 8,
}

impl ReservationType {
    /// The type for a TYPE field value.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::WriteExclusive,
            3 => Self::ExclusiveAccess,
            5 => Self::WriteExclusiveRegistrantsOnly,
            6 => Self::ExclusiveAccessRegistrantsOnly,
            7 => Self::WriteExclusiveAllRegistrants,
            8 => Self::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// All-registrants types: every registrant is a holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            Self::WriteExclusiveAllRegistrants | Self::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only types.
    pub fn registrants_only(self) -> bool {
        matches!(
            self,
            Self::WriteExclusiveRegistrantsOnly | Self::ExclusiveAccessRegistrantsOnly
        )
    }

    /// Exclusive access types: reads conflict too.
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            Self::ExclusiveAccess
                | Self::ExclusiveAccessRegistrantsOnly
                | Self::ExclusiveAccessAllRegistrants
        )
    }
}

/// One registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The registered I_T nexus.
    pub it: ItNexusId,
    /// Its reservation key (never zero).
    pub key: u64,
    /// ALL_TG_PT: the registration covers the initiator port on every target port.
    pub all_tg_pt: bool,
}

impl Registration {
    fn covers(&self, it: &ItNexusId) -> bool {
        self.it.same_initiator_port(it)
            && (self.all_tg_pt || (self.it.rel_port == it.rel_port && self.it.target == it.target))
    }
}

/// The persistent reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The I_T nexus that established it (for all-registrants types, any registrant holds).
    pub holder: ItNexusId,
    /// Its type (scope is always LU_SCOPE).
    pub rtype: ReservationType,
}

/// A unit attention to establish on every I_T nexus an entry covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UaTarget {
    /// The nexus named by the registration.
    pub it: ItNexusId,
    /// Whether every target port of that initiator port is meant.
    pub all_tg_pt: bool,
    /// The condition.
    pub reason: SenseReason,
}

/// What the caller must do after a reservation command (see [`PrState::take_effects`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrEffects {
    /// Unit attentions for other I_T nexuses (on this logical unit).
    pub unit_attentions: Vec<UaTarget>,
    /// PREEMPT AND ABORT: abort every task of these I_T nexuses on this logical unit.
    pub abort: Vec<UaTarget>,
    /// The persistent state changed: if [`PrState::aptpl`] write [`PrState::encode`]
    /// atomically beside the LUN, else remove the saved state.
    pub changed: bool,
}

impl PrEffects {
    /// The unit attentions that `it` must receive, in order.
    pub fn unit_attentions_for<'a>(
        &'a self,
        it: &'a ItNexusId,
    ) -> impl Iterator<Item = SenseReason> + 'a {
        self.unit_attentions
            .iter()
            .filter(move |u| u_covers(u, it))
            .map(|u| u.reason)
    }

    /// Whether the tasks of `it` on this logical unit must be aborted.
    pub fn aborts(&self, it: &ItNexusId) -> bool {
        self.abort.iter().any(|u| u_covers(u, it))
    }
}

fn u_covers(u: &UaTarget, it: &ItNexusId) -> bool {
    u.it.same_initiator_port(it)
        && (u.all_tg_pt || (u.it.rel_port == it.rel_port && u.it.target == it.target))
}

/// The reservation state of one logical unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrState {
    regs: Vec<Registration>,
    res: Option<Reservation>,
    generation: u32,
    aptpl: bool,
    spc2: Option<ItNexusId>,
    effects: PrEffects,
}

/// Why a reservation command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrFailure {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(SenseReason),
}

impl From<SenseReason> for PrFailure {
    fn from(r: SenseReason) -> Self {
        Self::Check(r)
    }
}

/// PERSISTENT RESERVE OUT service actions.
mod sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_IGNORE: u8 = 6;
    pub const REGISTER_AND_MOVE: u8 = 7;
}

/// A decoded PERSISTENT RESERVE OUT CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProutCdb {
    /// Service action.
    pub service_action: u8,
    /// SCOPE.
    pub scope: u8,
    /// TYPE.
    pub rtype: u8,
    /// Parameter list length.
    pub param_len: u32,
}

impl PrState {
    /// No registrations, no reservation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether any reservation or registration exists (when false no command conflicts:
    /// callers may skip [`conflicts`]).
    pub fn is_active(&self) -> bool {
        !self.regs.is_empty() || self.res.is_some() || self.spc2.is_some()
    }

    /// PRgeneration.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether the state must persist through power loss (APTPL).
    pub fn aptpl(&self) -> bool {
        self.aptpl
    }

    /// The registrations.
    pub fn registrations(&self) -> &[Registration] {
        &self.regs
    }

    /// The persistent reservation.
    pub fn reservation(&self) -> Option<&Reservation> {
        self.res.as_ref()
    }

    /// The SPC-2 (RESERVE (6)/(10)) reservation holder.
    pub fn spc2_holder(&self) -> Option<&ItNexusId> {
        self.spc2.as_ref()
    }

    /// Drains the effects of the commands run since the last call.
    pub fn take_effects(&mut self) -> PrEffects {
        std::mem::take(&mut self.effects)
    }

    /// I_T nexus loss (logout, connection drop with no reinstatement): releases its SPC-2
    /// reservation. Persistent reservations are unaffected.
    pub fn nexus_lost(&mut self, it: &ItNexusId) {
        if self.spc2.as_ref() == Some(it) {
            self.spc2 = None;
        }
    }

    /// LOGICAL UNIT RESET / target reset: releases the SPC-2 reservation.
    pub fn reset(&mut self) {
        self.spc2 = None;
    }

    fn reg_index(&self, it: &ItNexusId) -> Option<usize> {
        self.regs.iter().position(|r| r.covers(it))
    }

    fn is_holder(&self, it: &ItNexusId) -> bool {
        match &self.res {
            Some(r) if r.rtype.all_registrants() => self.reg_index(it).is_some(),
            Some(r) => &r.holder == it,
            None => false,
        }
    }

    fn ua_all_except(&mut self, it: &ItNexusId, reason: SenseReason) {
        for r in &self.regs {
            if !r.covers(it) {
                self.effects.unit_attentions.push(UaTarget {
                    it: r.it.clone(),
                    all_tg_pt: r.all_tg_pt,
                    reason,
                });
            }
        }
    }

    /// Removes registration `i`, releasing the reservation as SPC-4 5.13.11.2.3 says.
    fn unregister(&mut self, i: usize, by: &ItNexusId) {
        if i >= self.regs.len() {
            return;
        }
        let reg = self.regs.remove(i);
        let Some(res) = &self.res else { return };
        let release = if res.rtype.all_registrants() {
            self.regs.is_empty()
        } else {
            reg.covers(&res.holder)
        };
        if release {
            let rtype = res.rtype;
            self.res = None;
            if rtype.registrants_only() {
                self.ua_all_except(by, SenseReason::ReservationsReleased);
            }
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.changed();
    }

    /// The saved state (registrations, reservation, APTPL) must be written again; RESERVE and
    /// RELEASE come here without a new generation (SPC-4 §6.16.2: only registrations move it).
    fn changed(&mut self) {
        self.effects.changed = true;
    }
}

fn be64(d: &[u8], at: usize) -> u64 {
    d.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_be_bytes)
}

fn param_bit(byte: u16, bit: u8) -> PrFailure {
    PrFailure::Check(SenseReason::InvalidFieldInParameterList(FieldPointer::bit(
        byte, bit,
    )))
}

/// Runs PERSISTENT RESERVE OUT for I_T nexus `it` with parameter list `data`.
pub fn persistent_reserve_out(
    pr: &mut PrState,
    it: &ItNexusId,
    cdb: ProutCdb,
    data: &[u8],
) -> Result<(), PrFailure> {
    let move_sa = cdb.service_action == sa::REGISTER_AND_MOVE;
    let len_ok = if move_sa {
        (PROUT_PARAM_LEN..=MAX_MOVE_PARAM_LEN).contains(&cdb.param_len)
    } else {
        cdb.param_len == PROUT_PARAM_LEN
    };
    let param_len = usize::try_from(cdb.param_len).unwrap_or(usize::MAX);
    if !len_ok || data.len() < param_len {
        return Err(SenseReason::ParameterListLengthError.into());
    }
    let data = data.get(..param_len).unwrap_or(data);
    let key = be64(data, 0);
    let sa_key = be64(data, 8);
    let flags = data.get(20).copied().unwrap_or(0);
    let (spec_i_pt, all_tg_pt, aptpl) = (flags & 0x08 != 0, flags & 0x04 != 0, flags & 0x01 != 0);
    match cdb.service_action {
        sa::REGISTER | sa::REGISTER_IGNORE => {
            if spec_i_pt {
                return Err(param_bit(20, 3));
            }
            register(
                pr,
                it,
                key,
                sa_key,
                all_tg_pt,
                aptpl,
                cdb.service_action == sa::REGISTER_IGNORE,
            )
        }
        sa::REGISTER_AND_MOVE => register_and_move(pr, it, cdb, key, sa_key, data),
        _ => {
            let i = pr.reg_index(it).ok_or(PrFailure::Conflict)?;
            if pr.regs.get(i).map(|r| r.key) != Some(key) {
                return Err(PrFailure::Conflict);
            }
            let needs_type = cdb.service_action != sa::CLEAR;
            if needs_type && cdb.scope != 0 {
                return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(2, 7)).into());
            }
            let rtype = ReservationType::from_u8(cdb.rtype);
            let typed = || {
                rtype.ok_or(PrFailure::Check(SenseReason::InvalidFieldInCdb(
                    FieldPointer::bit(2, 3),
                )))
            };
            match cdb.service_action {
                sa::RESERVE => reserve(pr, it, typed()?),
                sa::RELEASE => release(pr, it, cdb.rtype),
                sa::CLEAR => {
                    pr.ua_all_except(it, SenseReason::ReservationsPreempted);
                    pr.regs.clear();
                    pr.res = None;
                    pr.bump();
                    Ok(())
                }
                sa::PREEMPT | sa::PREEMPT_AND_ABORT => preempt(
                    pr,
                    it,
                    typed()?,
                    sa_key,
                    cdb.service_action == sa::PREEMPT_AND_ABORT,
                ),
                _ => Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 4)).into()),
            }
        }
    }
}

fn register(
    pr: &mut PrState,
    it: &ItNexusId,
    key: u64,
    sa_key: u64,
    all_tg_pt: bool,
    aptpl: bool,
    ignore: bool,
) -> Result<(), PrFailure> {
    match pr.reg_index(it) {
        None => {
            if !ignore && key != 0 {
                return Err(PrFailure::Conflict);
            }
            if sa_key == 0 {
                return Ok(());
            }
            if pr.regs.len() >= MAX_REGISTRATIONS {
                return Err(SenseReason::InsufficientRegistrationResources.into());
            }
            pr.regs.push(Registration {
                it: it.clone(),
                key: sa_key,
                all_tg_pt,
            });
        }
        Some(i) => {
            if !ignore && pr.regs.get(i).map(|r| r.key) != Some(key) {
                return Err(PrFailure::Conflict);
            }
            if sa_key == 0 {
                pr.unregister(i, it);
            } else if let Some(r) = pr.regs.get_mut(i) {
                r.key = sa_key;
            }
        }
    }
    pr.aptpl = aptpl;
    pr.bump();
    Ok(())
}

fn reserve(pr: &mut PrState, it: &ItNexusId, rtype: ReservationType) -> Result<(), PrFailure> {
    match &pr.res {
        None => {
            pr.res = Some(Reservation {
                holder: it.clone(),
                rtype,
            });
            pr.changed();
            Ok(())
        }
        Some(r) if r.rtype == rtype && pr.is_holder(it) => Ok(()),
        Some(_) => Err(PrFailure::Conflict),
    }
}

fn release(pr: &mut PrState, it: &ItNexusId, rtype: u8) -> Result<(), PrFailure> {
    let Some(res) = &pr.res else { return Ok(()) };
    if !pr.is_holder(it) {
        return Ok(());
    }
    if res.rtype as u8 != rtype {
        return Err(SenseReason::InvalidReleaseOfPersistentReservation.into());
    }
    let rt = res.rtype;
    pr.res = None;
    pr.changed();
    if rt.registrants_only() || rt.all_registrants() {
        pr.ua_all_except(it, SenseReason::ReservationsReleased);
    }
    Ok(())
}

fn preempt(
    pr: &mut PrState,
    it: &ItNexusId,
    rtype: ReservationType,
    sa_key: u64,
    abort: bool,
) -> Result<(), PrFailure> {
    let preempt_all_registrants = pr
        .res
        .as_ref()
        .is_some_and(|r| r.rtype.all_registrants() && sa_key == 0);
    let holder_key = pr
        .res
        .as_ref()
        .and_then(|r| pr.reg_index(&r.holder))
        .and_then(|i| pr.regs.get(i))
        .map(|g| g.key);
    let takes_reservation = preempt_all_registrants
        || (pr.res.as_ref().is_some_and(|r| !r.rtype.all_registrants())
            && holder_key == Some(sa_key));
    if sa_key == 0 && !preempt_all_registrants {
        return Err(param_bit(8, 7));
    }
    // Registrations removed: every other one (all-registrants, key 0) or those with the key.
    let removed: Vec<Registration> = pr
        .regs
        .iter()
        .filter(|r| !r.covers(it) && (preempt_all_registrants || r.key == sa_key))
        .cloned()
        .collect();
    if removed.is_empty() && !takes_reservation {
        let own_key = pr.reg_index(it).and_then(|i| pr.regs.get(i)).map(|r| r.key);
        if own_key != Some(sa_key) {
            return Err(PrFailure::Conflict);
        }
    }
    let old = pr.res.clone();
    pr.regs
        .retain(|r| r.covers(it) || !(preempt_all_registrants || r.key == sa_key));
    for r in &removed {
        let target = UaTarget {
            it: r.it.clone(),
            all_tg_pt: r.all_tg_pt,
            reason: SenseReason::RegistrationsPreempted,
        };
        if abort {
            pr.effects.abort.push(target.clone());
        }
        pr.effects.unit_attentions.push(target);
    }
    if takes_reservation {
        pr.res = Some(Reservation {
            holder: it.clone(),
            rtype,
        });
        if old.as_ref().is_some_and(|o| o.rtype != rtype) {
            pr.ua_all_except(it, SenseReason::ReservationsReleased);
        }
    }
    pr.bump();
    Ok(())
}

/// Parses an iSCSI TransportID (SPC-4 7.6.4.6): the initiator name and ISID of format 01b.
fn parse_transport_id(tid: &[u8]) -> Result<(String, [u8; 6]), PrFailure> {
    let &b0 = tid.first().ok_or(param_bit(24, 7))?;
    if b0 & 0x0F != 0x05 || b0 >> 6 != 0x01 {
        return Err(param_bit(24, 7));
    }
    let len = tid
        .get(2..4)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let body = tid
        .get(4..4 + len)
        .ok_or(SenseReason::ParameterListLengthError)?;
    let text = body.split(|&b| b == 0).next().unwrap_or(&[]);
    let text = std::str::from_utf8(text).map_err(|_| param_bit(28, 7))?;
    let (name, isid) = text.rsplit_once(",i,0x").ok_or(param_bit(28, 7))?;
    if name.is_empty() || name.len() > MAX_NAME_LEN || isid.len() != 12 {
        return Err(param_bit(28, 7));
    }
    let mut out = [0u8; 6];
    for (i, o) in out.iter_mut().enumerate() {
        *o = isid
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(param_bit(28, 7))?;
    }
    Ok((name.to_owned(), out))
}

fn register_and_move(
    pr: &mut PrState,
    it: &ItNexusId,
    cdb: ProutCdb,
    key: u64,
    sa_key: u64,
    data: &[u8],
) -> Result<(), PrFailure> {
    let i = pr.reg_index(it).ok_or(PrFailure::Conflict)?;
    if pr.regs.get(i).map(|r| r.key) != Some(key) {
        return Err(PrFailure::Conflict);
    }
    let Some(res) = pr.res.clone() else {
        return Err(PrFailure::Conflict);
    };
    if res.rtype.all_registrants() || !pr.is_holder(it) {
        return Err(PrFailure::Conflict);
    }
    if cdb.scope != 0 {
        return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(2, 7)).into());
    }
    if sa_key == 0 {
        return Err(param_bit(8, 7));
    }
    let flags = data.get(17).copied().unwrap_or(0);
    let (unreg, aptpl) = (flags & 0x02 != 0, flags & 0x01 != 0);
    let rel_port = data
        .get(18..20)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let tid_len = data
        .get(20..24)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let tid_len = usize::try_from(tid_len).unwrap_or(usize::MAX);
    let tid = data
        .get(24..24usize.saturating_add(tid_len))
        .ok_or(SenseReason::ParameterListLengthError)?;
    let (initiator, isid) = parse_transport_id(tid)?;
    let dest = ItNexusId {
        initiator,
        isid,
        target: it.target.clone(),
        rel_port,
    };
    if dest.same_initiator_port(it) {
        return Err(param_bit(24, 7));
    }
    match pr.reg_index(&dest) {
        Some(j) => {
            if let Some(r) = pr.regs.get_mut(j) {
                r.key = sa_key;
            }
        }
        None => {
            if pr.regs.len() >= MAX_REGISTRATIONS {
                return Err(SenseReason::InsufficientRegistrationResources.into());
            }
            pr.regs.push(Registration {
                it: dest.clone(),
                key: sa_key,
                all_tg_pt: false,
            });
        }
    }
    pr.res = Some(Reservation {
        holder: dest,
        rtype: res.rtype,
    });
    if unreg && let Some(i) = pr.reg_index(it) {
        pr.regs.remove(i);
    }
    pr.aptpl = aptpl;
    pr.bump();
    Ok(())
}

/// Whether RESERVE (6)/(10) and RELEASE (6)/(10) from `it` complete GOOD and change nothing
/// because of the persistent reservation: SPC-3 5.6.3 / SPC-4 5.13.3, the behaviour that the
/// CRH bit of REPORT CAPABILITIES promises. So when `it` is the persistent reservation
/// holder, or is registered and the reservation is a registrants-only or all-registrants one.
fn crh_exempt(pr: &PrState, it: &ItNexusId) -> bool {
    match &pr.res {
        Some(r) if r.rtype.registrants_only() || r.rtype.all_registrants() => {
            pr.reg_index(it).is_some()
        }
        Some(_) => pr.is_holder(it),
        None => false,
    }
}

/// SPC-2 RESERVE (6)/(10). Conflicts were checked by [`conflicts`]. Under a persistent
/// reservation that `crh_exempt` lets it through, it establishes nothing.
pub fn reserve_spc2(pr: &mut PrState, it: &ItNexusId) {
    if crh_exempt(pr, it) {
        return;
    }
    pr.spc2 = Some(it.clone());
}

/// SPC-2 RELEASE (6)/(10): releases the reservation if `it` holds it (a persistent
/// reservation is never released by it).
pub fn release_spc2(pr: &mut PrState, it: &ItNexusId) {
    pr.nexus_lost(it);
}

/// An iSCSI TransportID for `it` (format 01b: name, ",i,0x", ISID), padded to 4 bytes.
fn write_transport_id(it: &ItNexusId, w: &mut DataIn<'_>) {
    let name = it
        .initiator
        .get(..it.initiator.len().min(MAX_NAME_LEN))
        .unwrap_or("");
    let raw = name.len() + 5 + 12 + 1;
    let padded = raw.next_multiple_of(4).max(20);
    w.u8(0x45);
    w.u8(0);
    w.u16(padded as u16);
    w.put(name.as_bytes());
    w.put(b",i,0x");
    for b in it.isid {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        w.put(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]]);
    }
    w.zeros(padded - raw + 1);
}

/// PERSISTENT RESERVE IN data for `service_action` (SPC-4 6.15).
pub fn persistent_reserve_in(
    pr: &PrState,
    service_action: u8,
    w: &mut DataIn<'_>,
) -> Result<(), SenseReason> {
    match service_action {
        0 => {
            w.u32(pr.generation);
            w.u32(0);
            for r in &pr.regs {
                w.u64(r.key);
            }
            let len = w.len_since_u32(8);
            w.patch_u32(4, len);
        }
        1 => {
            w.u32(pr.generation);
            match &pr.res {
                None => w.u32(0),
                Some(res) => {
                    w.u32(16);
                    let key = if res.rtype.all_registrants() {
                        0
                    } else {
                        pr.reg_index(&res.holder)
                            .and_then(|i| pr.regs.get(i))
                            .map_or(0, |r| r.key)
                    };
                    w.u64(key);
                    w.u32(0);
                    w.u8(0);
                    w.u8(res.rtype as u8);
                    w.u16(0);
                }
            }
        }
        2 => {
            w.u16(8);
            w.u8(0x10 | 0x04 | 0x01); // CRH, ATP_C, PTPL_C
            w.u8(0x80 | 0x10 | u8::from(pr.aptpl)); // TMV, ALLOW COMMANDS 001b, PTPL_A
            w.u8(0x80 | 0x40 | 0x20 | 0x08 | 0x02); // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
            w.u8(0x01); // EX_AC_AR
            w.u16(0);
        }
        3 => {
            w.u32(pr.generation);
            w.u32(0);
            for r in &pr.regs {
                let holder = pr
                    .res
                    .as_ref()
                    .filter(|res| res.rtype.all_registrants() || r.covers(&res.holder));
                w.u64(r.key);
                w.u32(0);
                w.u8(u8::from(r.all_tg_pt) << 1 | u8::from(holder.is_some()));
                w.u8(holder.map_or(0, |h| h.rtype as u8));
                w.u32(0);
                w.u16(r.it.rel_port);
                let at = w.pos();
                w.u32(0);
                write_transport_id(&r.it, w);
                let len = w.len_since_u32(at + 4);
                w.patch_u32(at, len);
            }
            let len = w.len_since_u32(8);
            w.patch_u32(4, len);
        }
        _ => return Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 4))),
    }
    Ok(())
}

/// How a command fares against reservations (SPC-4 5.13.1 table 62, SBC-3 4.17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Never conflicts.
    Allowed,
    /// Allowed under Write Exclusive types, conflicts under Exclusive Access types.
    Read,
    /// Conflicts under every type for an I_T nexus without access.
    Write,
}

fn access(cdb: &[u8]) -> Access {
    let opcode = cdb.first().copied().unwrap_or(0);
    let byte = |i: usize| cdb.get(i).copied().unwrap_or(0);
    match opcode {
        op::INQUIRY
        | op::REPORT_LUNS
        | op::REQUEST_SENSE
        | op::MAINTENANCE_IN
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::READ_CAPACITY_10
        | op::TEST_UNIT_READY => Access::Allowed,
        op::SERVICE_ACTION_IN_16 if byte(1) & 0x1F == op::SA_READ_CAPACITY_16 => Access::Allowed,
        op::PREVENT_ALLOW if byte(4) & 0x03 == 0 => Access::Allowed,
        op::START_STOP_UNIT if byte(4) & 0xF1 == 0x01 => Access::Allowed,
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::MODE_SENSE_6
        | op::MODE_SENSE_10
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12
        | op::RECEIVE_COPY_RESULTS
        | op::SERVICE_ACTION_IN_16 => Access::Read,
        _ => Access::Write,
    }
}

/// Whether `cdb` from I_T nexus `it` conflicts with the reservations of `pr` (RESERVATION
/// CONFLICT status). Cheap when nothing is reserved.
pub fn conflicts(pr: &PrState, it: &ItNexusId, cdb: &[u8]) -> bool {
    if !pr.is_active() {
        return false;
    }
    let opcode = cdb.first().copied().unwrap_or(0);
    let spc2_cmd = matches!(
        opcode,
        op::RESERVE_6 | op::RESERVE_10 | op::RELEASE_6 | op::RELEASE_10
    );
    // SPC-2 5.5.1: with any registration, RESERVE and RELEASE conflict; but not (CRH = 1,
    // SPC-3 5.6.3) from the holder or a registrant that the persistent reservation
    // privileges: those complete GOOD without effect.
    if spc2_cmd && !pr.regs.is_empty() {
        return !crh_exempt(pr, it);
    }
    if let Some(holder) = &pr.spc2
        && holder != it
    {
        return !(matches!(
            opcode,
            op::INQUIRY
                | op::REPORT_LUNS
                | op::REQUEST_SENSE
                | op::MAINTENANCE_IN
                | op::RELEASE_6
                | op::RELEASE_10
        ) || opcode == op::PREVENT_ALLOW && cdb.get(4).is_some_and(|b| b & 3 == 0));
    }
    let Some(res) = &pr.res else { return false };
    let privileged = if res.rtype.all_registrants() || res.rtype.registrants_only() {
        pr.reg_index(it).is_some()
    } else {
        pr.is_holder(it)
    };
    if privileged {
        return false;
    }
    match access(cdb) {
        Access::Allowed => false,
        Access::Read => res.rtype.exclusive_access(),
        Access::Write => true,
    }
}

/// Why saved reservation state could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrDecodeError {
    /// The data ended early or has bytes left over.
    #[error("reservation state: truncated or trailing data at byte {at}")]
    Length {
        /// Byte offset.
        at: usize,
    },
    /// Not this format or an unknown version.
    #[error("reservation state: bad magic or version")]
    Magic,
    /// The checksum does not match.
    #[error("reservation state: checksum mismatch")]
    Checksum,
    /// A field holds an impossible value.
    #[error("reservation state: invalid {field} at byte {at}")]
    Field {
        /// The field.
        field: &'static str,
        /// Byte offset.
        at: usize,
    },
}

const MAGIC: &[u8; 6] = b"VITPR\x01";
/// Largest encoded state.
pub const MAX_ENCODED_LEN: usize = MAGIC.len()
    + 4
    + 1
    + 1
    + 1
    + MAX_REGISTRATIONS * (8 + 1 + 4 + 2 * MAX_NAME_LEN + 8 + 2) * 2
    + 4;

fn put_id(out: &mut Vec<u8>, id: &ItNexusId) {
    for s in [&id.initiator, &id.target] {
        let s = s.get(..s.len().min(MAX_NAME_LEN)).unwrap_or("");
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&id.isid);
    out.extend_from_slice(&id.rel_port.to_be_bytes());
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PrDecodeError> {
        let s = self
            .data
            .get(self.at..self.at.saturating_add(n))
            .ok_or(PrDecodeError::Length { at: self.at })?;
        self.at += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PrDecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], PrDecodeError> {
        let at = self.at;
        <[u8; N]>::try_from(self.take(N)?).map_err(|_| PrDecodeError::Length { at })
    }

    fn string(&mut self) -> Result<String, PrDecodeError> {
        let at = self.at;
        let n = usize::from(self.u8()?);
        if n > MAX_NAME_LEN {
            return Err(PrDecodeError::Field {
                field: "name length",
                at,
            });
        }
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| PrDecodeError::Field { field: "name", at })
    }

    fn id(&mut self) -> Result<ItNexusId, PrDecodeError> {
        let initiator = self.string()?;
        let target = self.string()?;
        let isid = self.arr::<6>()?;
        let rel_port = u16::from_be_bytes(self.arr::<2>()?);
        Ok(ItNexusId {
            initiator,
            isid,
            target,
            rel_port,
        })
    }
}

impl PrState {
    /// The persistent part (registrations, reservation, generation, APTPL) in a stable
    /// binary format: magic and version, the fields, CRC-32C of everything before it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.push(u8::from(self.aptpl));
        out.push(self.regs.len().min(MAX_REGISTRATIONS) as u8);
        for r in self.regs.iter().take(MAX_REGISTRATIONS) {
            out.extend_from_slice(&r.key.to_be_bytes());
            out.push(u8::from(r.all_tg_pt));
            put_id(&mut out, &r.it);
        }
        match &self.res {
            None => out.push(0),
            Some(res) => {
                out.push(res.rtype as u8);
                put_id(&mut out, &res.holder);
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads a state written by [`PrState::encode`] from `source` (a saved file, opened by the
    /// caller), taking at most [`MAX_ENCODED_LEN`] + 1 bytes whatever it holds: a longer or
    /// damaged state is `InvalidData`; a read error keeps its OS error (so running out of
    /// descriptors can be told apart). vitd's start and `vitctl config validate` both read a
    /// LUN's saved reservations through this.
    pub fn read_saved(source: impl std::io::Read) -> std::io::Result<Self> {
        use std::io::{Error, ErrorKind, Read};
        let mut bytes = Vec::new();
        source
            .take(MAX_ENCODED_LEN as u64 + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("larger than {MAX_ENCODED_LEN} bytes"),
            ));
        }
        Self::decode(&bytes).map_err(|e| Error::new(ErrorKind::InvalidData, e.to_string()))
    }

    /// Loads a state written by [`PrState::encode`]; any damage is an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<Self, PrDecodeError> {
        if data.len() > MAX_ENCODED_LEN || data.len() < MAGIC.len() + 4 {
            return Err(PrDecodeError::Length { at: data.len() });
        }
        let (body, crc) = data.split_at(data.len() - 4);
        if !body.starts_with(MAGIC) {
            return Err(PrDecodeError::Magic);
        }
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err(PrDecodeError::Checksum);
        }
        let mut r = Reader {
            data: body,
            at: MAGIC.len(),
        };
        let generation = u32::from_be_bytes(r.arr::<4>()?);
        let at = r.at;
        let aptpl = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(PrDecodeError::Field { field: "aptpl", at }),
        };
        let at = r.at;
        let n = usize::from(r.u8()?);
        if n > MAX_REGISTRATIONS {
            return Err(PrDecodeError::Field {
                field: "registration count",
                at,
            });
        }
        let mut regs = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.at;
            let key = u64::from_be_bytes(r.arr::<8>()?);
            let all_tg_pt = r.u8()? != 0;
            let it = r.id()?;
            if key == 0 {
                return Err(PrDecodeError::Field { field: "key", at });
            }
            if regs.iter().any(|g: &Registration| g.it == it) {
                return Err(PrDecodeError::Field {
                    field: "duplicate registration",
                    at,
                });
            }
            regs.push(Registration { it, key, all_tg_pt });
        }
        let at = r.at;
        let res = match r.u8()? {
            0 => None,
            t => Some(Reservation {
                rtype: ReservationType::from_u8(t)
                    .ok_or(PrDecodeError::Field { field: "type", at })?,
                holder: r.id()?,
            }),
        };
        if r.at != body.len() {
            return Err(PrDecodeError::Length { at: r.at });
        }
        // A reservation is held by a registrant (all-registrants: by any, so one must be left).
        let held = res.as_ref().is_none_or(|v| {
            if v.rtype.all_registrants() {
                !regs.is_empty()
            } else {
                regs.iter().any(|g| g.covers(&v.holder))
            }
        });
        if !held {
            return Err(PrDecodeError::Field {
                field: "reservation holder",
                at,
            });
        }
        Ok(Self {
            regs,
            res,
            generation,
            aptpl,
            spc2: None,
            effects: PrEffects::default(),
        })
    }
}

#[cfg(test)]
mod tests;
