//! PERSISTENT RESERVE state machine, conflict table and APTPL encoding tests.

use super::*;
use ReservationType as T;
use proptest::prelude::*;

const ALL_TYPES: [T; 6] = [
    T::WriteExclusive,
    T::ExclusiveAccess,
    T::WriteExclusiveRegistrantsOnly,
    T::ExclusiveAccessRegistrantsOnly,
    T::WriteExclusiveAllRegistrants,
    T::ExclusiveAccessAllRegistrants,
];

fn nexus(initiator: &str, isid: u8, port: u16) -> ItNexusId {
    ItNexusId {
        initiator: initiator.to_owned(),
        isid: [0x40, 0, 0, 0, 0, isid],
        target: "iqn.t".to_owned(),
        rel_port: port,
    }
}

fn a() -> ItNexusId {
    nexus("iqn.a", 1, 1)
}
fn b() -> ItNexusId {
    nexus("iqn.b", 1, 1)
}
fn c() -> ItNexusId {
    nexus("iqn.c", 1, 1)
}

fn params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

fn out(
    pr: &mut PrState,
    it: &ItNexusId,
    service_action: u8,
    rtype: u8,
    key: u64,
    sa_key: u64,
) -> Result<(), PrFailure> {
    let cdb = ProutCdb {
        service_action,
        scope: 0,
        rtype,
        param_len: 24,
    };
    persistent_reserve_out(pr, it, cdb, &params(key, sa_key, 0))
}

fn register(pr: &mut PrState, it: &ItNexusId, key: u64) {
    assert_eq!(out(pr, it, sa::REGISTER, 0, 0, key), Ok(()));
}

fn reserve(pr: &mut PrState, it: &ItNexusId, key: u64, t: T) -> Result<(), PrFailure> {
    out(pr, it, sa::RESERVE, t as u8, key, 0)
}

const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];
const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];

fn three_registered(t: T) -> PrState {
    let mut pr = PrState::new();
    register(&mut pr, &a(), 0xA);
    register(&mut pr, &b(), 0xB);
    assert_eq!(reserve(&mut pr, &a(), 0xA, t), Ok(()));
    pr
}

#[test]
fn register_rules() {
    let mut pr = PrState::new();
    // Unregistered with a non-zero reservation key: conflict.
    assert_eq!(
        out(&mut pr, &a(), sa::REGISTER, 0, 5, 6),
        Err(PrFailure::Conflict)
    );
    // SA key 0 while unregistered: nothing happens.
    assert_eq!(out(&mut pr, &a(), sa::REGISTER, 0, 0, 0), Ok(()));
    assert_eq!((pr.registrations().len(), pr.generation()), (0, 0));
    register(&mut pr, &a(), 0xA);
    assert_eq!(pr.generation(), 1);
    assert!(pr.take_effects().changed);
    // Wrong key to change: conflict; right key: changed.
    assert_eq!(
        out(&mut pr, &a(), sa::REGISTER, 0, 0xB, 0xC),
        Err(PrFailure::Conflict)
    );
    assert_eq!(out(&mut pr, &a(), sa::REGISTER, 0, 0xA, 0xC), Ok(()));
    assert_eq!(pr.registrations()[0].key, 0xC);
    // REGISTER AND IGNORE EXISTING KEY ignores the reservation key.
    assert_eq!(
        out(&mut pr, &a(), sa::REGISTER_IGNORE, 0, 0x99, 0xD),
        Ok(())
    );
    assert_eq!(pr.registrations()[0].key, 0xD);
    // Unregister.
    assert_eq!(out(&mut pr, &a(), sa::REGISTER, 0, 0xD, 0), Ok(()));
    assert!(pr.registrations().is_empty());
    assert_eq!(pr.generation(), 4);
    assert!(!pr.is_active());
}

#[test]
fn register_parameter_checks() {
    let mut pr = PrState::new();
    let cdb = ProutCdb {
        service_action: sa::REGISTER,
        scope: 0,
        rtype: 0,
        param_len: 23,
    };
    assert_eq!(
        persistent_reserve_out(&mut pr, &a(), cdb, &params(0, 1, 0)),
        Err(PrFailure::Check(SenseReason::ParameterListLengthError))
    );
    let cdb = ProutCdb {
        param_len: 24,
        ..cdb
    };
    assert_eq!(
        persistent_reserve_out(&mut pr, &a(), cdb, &params(0, 1, 0x08)),
        Err(PrFailure::Check(SenseReason::InvalidFieldInParameterList(
            FieldPointer::bit(20, 3)
        )))
    );
    // Short data-out.
    assert_eq!(
        persistent_reserve_out(&mut pr, &a(), cdb, &[0; 10]),
        Err(PrFailure::Check(SenseReason::ParameterListLengthError))
    );
    // APTPL and ALL_TG_PT are honoured.
    assert_eq!(
        persistent_reserve_out(&mut pr, &a(), cdb, &params(0, 1, 0x05)),
        Ok(())
    );
    assert!(pr.aptpl());
    assert!(pr.registrations()[0].all_tg_pt);
    // The registration covers the same initiator port through another target port.
    let other_port = nexus("iqn.a", 1, 2);
    assert_eq!(out(&mut pr, &other_port, sa::REGISTER, 0, 1, 2), Ok(()));
    assert_eq!(pr.registrations().len(), 1);
}

#[test]
fn registration_limit() {
    let mut pr = PrState::new();
    for i in 0..MAX_REGISTRATIONS {
        register(&mut pr, &nexus("iqn.x", i as u8, 1), 1);
    }
    assert_eq!(
        out(&mut pr, &a(), sa::REGISTER, 0, 0, 1),
        Err(PrFailure::Check(
            SenseReason::InsufficientRegistrationResources
        ))
    );
}

#[test]
fn reserve_requires_registration_and_key() {
    let mut pr = PrState::new();
    assert_eq!(
        reserve(&mut pr, &a(), 0, T::WriteExclusive),
        Err(PrFailure::Conflict)
    );
    register(&mut pr, &a(), 0xA);
    assert_eq!(
        reserve(&mut pr, &a(), 0xB, T::WriteExclusive),
        Err(PrFailure::Conflict)
    );
    assert_eq!(
        out(&mut pr, &a(), sa::RESERVE, 2, 0xA, 0),
        Err(PrFailure::Check(SenseReason::InvalidFieldInCdb(
            FieldPointer::bit(2, 3)
        )))
    );
    let cdb = ProutCdb {
        service_action: sa::RESERVE,
        scope: 1,
        rtype: 1,
        param_len: 24,
    };
    assert_eq!(
        persistent_reserve_out(&mut pr, &a(), cdb, &params(0xA, 0, 0)),
        Err(PrFailure::Check(SenseReason::InvalidFieldInCdb(
            FieldPointer::bit(2, 7)
        )))
    );
    let gen_before = pr.generation();
    assert_eq!(reserve(&mut pr, &a(), 0xA, T::WriteExclusive), Ok(()));
    // Same type again: fine; other type: conflict. RESERVE does not bump the generation.
    assert_eq!(reserve(&mut pr, &a(), 0xA, T::WriteExclusive), Ok(()));
    assert_eq!(
        reserve(&mut pr, &a(), 0xA, T::ExclusiveAccess),
        Err(PrFailure::Conflict)
    );
    assert_eq!(pr.generation(), gen_before);
    register(&mut pr, &b(), 0xB);
    assert_eq!(
        reserve(&mut pr, &b(), 0xB, T::WriteExclusive),
        Err(PrFailure::Conflict)
    );
}

/// The SPC-4 conflict table for every type: holder, other registrant, unregistered nexus.
#[test]
fn conflict_table_per_type() {
    for t in ALL_TYPES {
        let pr = three_registered(t);
        // The holder never conflicts.
        assert!(!conflicts(&pr, &a(), &WRITE10), "{t:?} holder write");
        assert!(!conflicts(&pr, &a(), &READ10), "{t:?} holder read");
        // A registrant: full access under RO and AR types only.
        let registrant_access = t.registrants_only() || t.all_registrants();
        assert_eq!(
            conflicts(&pr, &b(), &WRITE10),
            !registrant_access,
            "{t:?} registrant write"
        );
        assert_eq!(
            conflicts(&pr, &b(), &READ10),
            !registrant_access && t.exclusive_access(),
            "{t:?} registrant read"
        );
        // Unregistered: writes always conflict, reads under exclusive access types.
        assert!(conflicts(&pr, &c(), &WRITE10), "{t:?} other write");
        assert_eq!(
            conflicts(&pr, &c(), &READ10),
            t.exclusive_access(),
            "{t:?} other read"
        );
        for allowed in [&INQUIRY[..], &TUR[..], &[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0]] {
            assert!(!conflicts(&pr, &c(), allowed), "{t:?} {allowed:02x?}");
        }
        // Mode sense is read-class; mode select, sync cache, unmap write-class.
        assert_eq!(
            conflicts(&pr, &c(), &[0x1A, 0, 0x3F, 0, 96, 0]),
            t.exclusive_access()
        );
        assert!(conflicts(&pr, &c(), &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(conflicts(&pr, &c(), &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]));
    }
}

#[test]
fn registrations_alone_do_not_conflict_but_block_spc2() {
    let mut pr = PrState::new();
    register(&mut pr, &a(), 1);
    assert!(!conflicts(&pr, &b(), &WRITE10));
    assert!(conflicts(&pr, &b(), &[0x16, 0, 0, 0, 0, 0]));
    assert!(conflicts(&pr, &a(), &[0x17, 0, 0, 0, 0, 0]));
}

#[test]
fn spc2_reserve_release() {
    let mut pr = PrState::new();
    reserve_spc2(&mut pr, &a());
    assert!(pr.is_active());
    assert!(!conflicts(&pr, &a(), &WRITE10));
    assert!(conflicts(&pr, &b(), &WRITE10));
    assert!(conflicts(&pr, &b(), &TUR));
    assert!(conflicts(&pr, &b(), &[0x16, 0, 0, 0, 0, 0]));
    assert!(!conflicts(&pr, &b(), &INQUIRY));
    assert!(!conflicts(&pr, &b(), &[0x17, 0, 0, 0, 0, 0]));
    // RELEASE from a non-holder does nothing.
    release_spc2(&mut pr, &b());
    assert_eq!(pr.spc2_holder(), Some(&a()));
    release_spc2(&mut pr, &a());
    assert!(!pr.is_active());
    reserve_spc2(&mut pr, &a());
    pr.nexus_lost(&a());
    assert!(pr.spc2_holder().is_none());
    reserve_spc2(&mut pr, &a());
    pr.reset();
    assert!(pr.spc2_holder().is_none());
}

#[test]
fn release_rules_and_unit_attentions() {
    for t in ALL_TYPES {
        let mut pr = three_registered(t);
        pr.take_effects();
        // A non-holder's release is a no-op (for all-registrants B is a holder).
        if !t.all_registrants() {
            assert_eq!(out(&mut pr, &b(), sa::RELEASE, t as u8, 0xB, 0), Ok(()));
            assert!(pr.reservation().is_some());
        }
        let wrong = if t == T::WriteExclusive { 3 } else { 1 };
        assert_eq!(
            out(&mut pr, &a(), sa::RELEASE, wrong, 0xA, 0),
            Err(PrFailure::Check(
                SenseReason::InvalidReleaseOfPersistentReservation
            ))
        );
        assert_eq!(out(&mut pr, &a(), sa::RELEASE, t as u8, 0xA, 0), Ok(()));
        assert!(pr.reservation().is_none());
        let fx = pr.take_effects();
        let released: Vec<_> = fx.unit_attentions_for(&b()).collect();
        if t.registrants_only() || t.all_registrants() {
            assert_eq!(released, vec![SenseReason::ReservationsReleased], "{t:?}");
        } else {
            assert!(released.is_empty(), "{t:?}");
        }
        assert_eq!(fx.unit_attentions_for(&a()).count(), 0);
        // Release without a reservation: GOOD.
        assert_eq!(out(&mut pr, &a(), sa::RELEASE, t as u8, 0xA, 0), Ok(()));
    }
}

#[test]
fn unregistering_holder_releases() {
    let mut pr = three_registered(T::WriteExclusiveRegistrantsOnly);
    pr.take_effects();
    assert_eq!(out(&mut pr, &a(), sa::REGISTER, 0, 0xA, 0), Ok(()));
    assert!(pr.reservation().is_none());
    let fx = pr.take_effects();
    assert_eq!(
        fx.unit_attentions_for(&b()).collect::<Vec<_>>(),
        vec![SenseReason::ReservationsReleased]
    );
    // All registrants: the reservation survives until the last registrant leaves.
    let mut pr = three_registered(T::ExclusiveAccessAllRegistrants);
    assert_eq!(out(&mut pr, &a(), sa::REGISTER, 0, 0xA, 0), Ok(()));
    assert!(pr.reservation().is_some());
    assert_eq!(out(&mut pr, &b(), sa::REGISTER, 0, 0xB, 0), Ok(()));
    assert!(pr.reservation().is_none());
}

#[test]
fn clear_preempts_everyone() {
    let mut pr = three_registered(T::ExclusiveAccess);
    pr.take_effects();
    let generation = pr.generation();
    assert_eq!(
        out(&mut pr, &c(), sa::CLEAR, 0, 0, 0),
        Err(PrFailure::Conflict)
    );
    assert_eq!(out(&mut pr, &b(), sa::CLEAR, 0, 0xB, 0), Ok(()));
    assert!(pr.registrations().is_empty() && pr.reservation().is_none());
    assert_eq!(pr.generation(), generation + 1);
    let fx = pr.take_effects();
    assert_eq!(
        fx.unit_attentions_for(&a()).collect::<Vec<_>>(),
        vec![SenseReason::ReservationsPreempted]
    );
    assert_eq!(fx.unit_attentions_for(&b()).count(), 0);
    assert!(fx.changed);
}

#[test]
fn preempt_holder_takes_reservation() {
    let mut pr = three_registered(T::WriteExclusive);
    register(&mut pr, &c(), 0xC);
    pr.take_effects();
    assert_eq!(
        out(
            &mut pr,
            &b(),
            sa::PREEMPT,
            T::ExclusiveAccess as u8,
            0xB,
            0xA
        ),
        Ok(())
    );
    let res = pr.reservation().unwrap();
    assert_eq!((res.holder.clone(), res.rtype), (b(), T::ExclusiveAccess));
    assert!(pr.registrations().iter().all(|r| r.key != 0xA));
    let fx = pr.take_effects();
    assert_eq!(
        fx.unit_attentions_for(&a()).collect::<Vec<_>>(),
        vec![SenseReason::RegistrationsPreempted]
    );
    // The type changed: the remaining registrant hears RESERVATIONS RELEASED.
    assert_eq!(
        fx.unit_attentions_for(&c()).collect::<Vec<_>>(),
        vec![SenseReason::ReservationsReleased]
    );
    assert!(fx.abort.is_empty());
}

#[test]
fn preempt_non_holder_removes_registrations_only() {
    let mut pr = three_registered(T::WriteExclusive);
    register(&mut pr, &c(), 0xC);
    assert_eq!(
        out(
            &mut pr,
            &b(),
            sa::PREEMPT,
            T::WriteExclusive as u8,
            0xB,
            0xC
        ),
        Ok(())
    );
    assert_eq!(pr.reservation().unwrap().holder, a());
    assert_eq!(pr.registrations().len(), 2);
    // Unknown key: conflict; zero key (not all-registrants): invalid field.
    assert_eq!(
        out(&mut pr, &b(), sa::PREEMPT, 1, 0xB, 0x77),
        Err(PrFailure::Conflict)
    );
    assert_eq!(
        out(&mut pr, &b(), sa::PREEMPT, 1, 0xB, 0),
        Err(PrFailure::Check(SenseReason::InvalidFieldInParameterList(
            FieldPointer::bit(8, 7)
        )))
    );
    // No reservation at all: preempt removes registrations.
    let mut pr = PrState::new();
    register(&mut pr, &a(), 0xA);
    register(&mut pr, &b(), 0xB);
    assert_eq!(out(&mut pr, &a(), sa::PREEMPT, 1, 0xA, 0xB), Ok(()));
    assert_eq!(pr.registrations().len(), 1);
    assert!(pr.reservation().is_none());
}

#[test]
fn preempt_all_registrants_with_zero_key() {
    let mut pr = three_registered(T::WriteExclusiveAllRegistrants);
    register(&mut pr, &c(), 0xC);
    pr.take_effects();
    assert_eq!(
        out(
            &mut pr,
            &c(),
            sa::PREEMPT_AND_ABORT,
            T::WriteExclusive as u8,
            0xC,
            0
        ),
        Ok(())
    );
    assert_eq!(pr.registrations().len(), 1);
    let res = pr.reservation().unwrap();
    assert_eq!((res.holder.clone(), res.rtype), (c(), T::WriteExclusive));
    let fx = pr.take_effects();
    assert!(fx.aborts(&a()) && fx.aborts(&b()) && !fx.aborts(&c()));
    assert_eq!(
        fx.unit_attentions_for(&a()).next(),
        Some(SenseReason::RegistrationsPreempted)
    );
}

#[test]
fn register_and_move() {
    let mut pr = three_registered(T::ExclusiveAccess);
    let dest = nexus("iqn.d", 7, 1);
    let name = "iqn.d,i,0x400000000007";
    let mut tid = vec![0x45, 0, 0, 24];
    tid.extend(name.as_bytes());
    tid.resize(28, 0);
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&0xAu64.to_be_bytes());
    p[8..16].copy_from_slice(&0xDu64.to_be_bytes());
    p[17] = 0x02; // UNREG
    p[18..20].copy_from_slice(&1u16.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend(&tid);
    let cdb = ProutCdb {
        service_action: sa::REGISTER_AND_MOVE,
        scope: 0,
        rtype: T::ExclusiveAccess as u8,
        param_len: p.len() as u32,
    };
    // Only the holder may move.
    let mut pb = p.clone();
    pb[0..8].copy_from_slice(&0xBu64.to_be_bytes());
    assert_eq!(
        persistent_reserve_out(&mut pr, &b(), cdb, &pb),
        Err(PrFailure::Conflict)
    );
    assert_eq!(persistent_reserve_out(&mut pr, &a(), cdb, &p), Ok(()));
    assert_eq!(pr.reservation().unwrap().holder, dest);
    assert!(
        pr.registrations()
            .iter()
            .any(|r| r.it == dest && r.key == 0xD)
    );
    assert!(!pr.registrations().iter().any(|r| r.it == a()));
    assert!(conflicts(&pr, &a(), &READ10));
    assert!(!conflicts(&pr, &dest, &WRITE10));
}

#[test]
fn persistent_reserve_in_data() {
    let mut pr = three_registered(T::WriteExclusive);
    let mut buf = [0u8; 512];
    let mut w = DataIn::new(&mut buf, 512);
    persistent_reserve_in(&pr, 0, &mut w).unwrap();
    assert_eq!(w.stored(), 24);
    assert_eq!(&buf[0..4], &2u32.to_be_bytes());
    assert_eq!(&buf[4..8], &16u32.to_be_bytes());
    assert_eq!(&buf[8..16], &0xAu64.to_be_bytes());
    assert_eq!(&buf[16..24], &0xBu64.to_be_bytes());

    let mut w = DataIn::new(&mut buf, 512);
    persistent_reserve_in(&pr, 1, &mut w).unwrap();
    assert_eq!(w.stored(), 24);
    assert_eq!(&buf[4..8], &16u32.to_be_bytes());
    assert_eq!(&buf[8..16], &0xAu64.to_be_bytes());
    assert_eq!(buf[21], 1);

    let mut w = DataIn::new(&mut buf, 512);
    persistent_reserve_in(&pr, 2, &mut w).unwrap();
    assert_eq!(w.stored(), 8);
    assert_eq!(&buf[..6], &[0, 8, 0x15, 0x90, 0xEA, 0x01]);

    let mut w = DataIn::new(&mut buf, 512);
    persistent_reserve_in(&pr, 3, &mut w).unwrap();
    let n = w.stored();
    assert_eq!(
        usize::try_from(u32::from_be_bytes(buf[4..8].try_into().unwrap())).unwrap(),
        n - 8
    );
    // First descriptor: key A, holder, type 1, relative port 1, iSCSI TransportID.
    assert_eq!(&buf[8..16], &0xAu64.to_be_bytes());
    assert_eq!((buf[20], buf[21]), (0x01, 0x01));
    assert_eq!(&buf[26..28], &1u16.to_be_bytes());
    let tid_len = u32::from_be_bytes(buf[28..32].try_into().unwrap()) as usize;
    assert_eq!(tid_len % 4, 0);
    assert_eq!(buf[32], 0x45);
    let tid = &buf[36..32 + tid_len];
    assert!(tid.starts_with(b"iqn.a,i,0x400000000001\0"));
    // Second descriptor: not the holder.
    let second = 32 + tid_len;
    assert_eq!(buf[second + 12], 0);

    assert_eq!(
        persistent_reserve_in(&pr, 4, &mut DataIn::new(&mut buf, 8)),
        Err(SenseReason::InvalidFieldInCdb(FieldPointer::bit(1, 4)))
    );
    // All registrants: READ RESERVATION reports key 0.
    pr = three_registered(T::ExclusiveAccessAllRegistrants);
    let mut w = DataIn::new(&mut buf, 512);
    persistent_reserve_in(&pr, 1, &mut w).unwrap();
    assert_eq!(&buf[8..16], &0u64.to_be_bytes());
    assert_eq!(buf[21], 8);
}

#[test]
fn aptpl_round_trip() {
    let mut pr = three_registered(T::ExclusiveAccessRegistrantsOnly);
    let cdb = ProutCdb {
        service_action: sa::REGISTER,
        scope: 0,
        rtype: 0,
        param_len: 24,
    };
    persistent_reserve_out(&mut pr, &c(), cdb, &params(0, 0xC, 0x05)).unwrap();
    reserve_spc2(&mut pr, &a());
    let bytes = pr.encode();
    let back = PrState::decode(&bytes).unwrap();
    assert_eq!(back.registrations(), pr.registrations());
    assert_eq!(back.reservation(), pr.reservation());
    assert_eq!(back.generation(), pr.generation());
    assert!(back.aptpl());
    // The SPC-2 reservation does not persist.
    assert!(back.spc2_holder().is_none());
    // Every single-bit flip is detected.
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert!(PrState::decode(&bad).is_err(), "flip at {i}");
    }
    assert_eq!(
        PrState::decode(&bytes[..bytes.len() - 1]).err(),
        Some(PrDecodeError::Checksum)
    );
    assert!(PrState::decode(b"").is_err());
}

/// A hand-edited file whose checksum was fixed up may still say what no sequence of commands
/// leaves: such a state is refused, not loaded (a reservation nobody holds would keep every
/// initiator from writing).
#[test]
fn decode_refuses_inconsistent_states() {
    // A WRITE EXCLUSIVE reservation whose holder is not registered.
    let mut pr = three_registered(T::WriteExclusive);
    pr.regs.retain(|r| r.it != a());
    assert!(PrState::decode(&pr.encode()).is_err(), "orphan holder");
    // An all-registrants reservation with no registrant left.
    let mut pr = three_registered(T::WriteExclusiveAllRegistrants);
    pr.regs.clear();
    assert!(PrState::decode(&pr.encode()).is_err(), "no registrants");
    // The same I_T nexus registered twice.
    let mut pr = three_registered(T::WriteExclusive);
    let dup = pr.regs[1].clone();
    pr.regs.push(dup);
    assert!(PrState::decode(&pr.encode()).is_err(), "duplicate");
    // What the commands leave loads: all-registrants, its holder since unregistered.
    let mut pr = three_registered(T::WriteExclusiveAllRegistrants);
    assert_eq!(out(&mut pr, &a(), sa::REGISTER, 0, 0xA, 0), Ok(()));
    assert!(pr.reservation().is_some());
    assert_eq!(
        PrState::decode(&pr.encode()).as_ref(),
        Ok(&{
            let mut p = pr.clone();
            p.effects = PrEffects::default();
            p
        })
    );
}

proptest! {
    #[test]
    fn decode_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = PrState::decode(&data);
    }

    #[test]
    fn decode_with_valid_checksum_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut data = MAGIC.to_vec();
        data.extend(body);
        let crc = crc32c::crc32c(&data);
        data.extend(crc.to_be_bytes());
        if let Ok(s) = PrState::decode(&data) {
            prop_assert_eq!(PrState::decode(&s.encode()).ok(), Some(s));
        }
    }

    #[test]
    fn random_service_actions_keep_invariants(
        ops in proptest::collection::vec((0u8..3, 0u8..8, 0u8..9, 0u64..4, 0u64..4), 0..40)
    ) {
        let its = [a(), b(), c()];
        let mut pr = PrState::new();
        for (who, sa, rtype, key, sa_key) in ops {
            let _ = out(&mut pr, &its[usize::from(who)], sa, rtype, key, sa_key);
            prop_assert!(pr.registrations().iter().all(|r| r.key != 0));
            if let Some(res) = pr.reservation() {
                prop_assert!(!pr.registrations().is_empty());
                if !res.rtype.all_registrants() {
                    prop_assert!(pr.registrations().iter().any(|r| r.covers(&res.holder)));
                }
            }
            let enc = pr.encode();
            let back = PrState::decode(&enc).unwrap();
            prop_assert_eq!(back.registrations(), pr.registrations());
        }
    }
}

#[test]
fn reserve_and_release_are_saved_under_aptpl() {
    let mut pr = PrState::new();
    let cdb = ProutCdb {
        service_action: sa::REGISTER,
        scope: 0,
        rtype: 0,
        param_len: 24,
    };
    persistent_reserve_out(&mut pr, &a(), cdb, &params(0, 0xA, 0x01)).unwrap();
    assert!(pr.take_effects().changed);
    let generation = pr.generation;
    // The reservation is part of what is saved: taking it and giving it back are both saved,
    // without a new generation.
    let before = pr.encode();
    assert_eq!(reserve(&mut pr, &a(), 0xA, T::WriteExclusive), Ok(()));
    assert_ne!(pr.encode(), before);
    assert!(pr.take_effects().changed, "RESERVE not saved");
    let before = pr.encode();
    assert_eq!(
        out(&mut pr, &a(), sa::RELEASE, T::WriteExclusive as u8, 0xA, 0),
        Ok(())
    );
    assert_ne!(pr.encode(), before);
    assert!(pr.take_effects().changed, "RELEASE not saved");
    assert_eq!(pr.generation, generation);
}
