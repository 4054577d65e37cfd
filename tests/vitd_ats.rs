//! COMPARE AND WRITE (VMware's ATS) is atomic under contention: several sessions (spread over
//! the data threads) race for one block, round after round; each round has exactly one winner,
//! the others get MISCOMPARE, and the block holds exactly the winner's data, never a mix.

mod common;
use common::*;
use std::sync::{Arc, Barrier};
use vit::iscsi::initiator::login;

const SESSIONS: usize = 4;
const ROUNDS: u64 = 40;
const LBA: u64 = 7;
const BS: usize = 512;

/// The block at the start of round `r`.
fn state(r: u64) -> Vec<u8> {
    let mut b = vec![0xaa; BS];
    b[..8].copy_from_slice(&r.to_le_bytes());
    b
}

/// What session `t` tries to write in round `r`.
fn claim(r: u64, t: usize) -> Vec<u8> {
    let mut b = vec![t as u8 + 1; BS];
    b[..8].copy_from_slice(&(r + 1).to_le_bytes());
    b
}

#[test]
fn compare_and_write_has_one_winner_per_round() {
    let ds = Datastore::new();
    ds.target("ats", &[]);
    ds.lun("ats", 0, "8M");
    let vitd = ds.start();
    let port = ds.port;
    let mut admin = login(
        port,
        "iqn.2026-11.io.vit:ats-admin",
        &iqn("ats"),
        [0x80, 0, 0, 0, 0, 0x99],
    );
    // The first command of a new session reports the power-on unit attention.
    admin.test_unit_ready().unwrap();
    // Round 0 starts from a known block.
    let r = admin
        .command(0, &cdb16(0x8a, LBA, 1), &state(0), 0)
        .unwrap();
    assert_eq!(r.status, 0);
    let barrier = Arc::new(Barrier::new(SESSIONS + 1));
    let workers: Vec<_> = (0..SESSIONS)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = login(
                    port,
                    &format!("iqn.2026-11.io.vit:ats-{t}"),
                    &iqn("ats"),
                    [0x80, 0, 0, 0, 1, t as u8],
                );
                s.test_unit_ready().unwrap();
                let mut outcomes = Vec::new();
                for round in 0..ROUNDS {
                    barrier.wait();
                    let mut data = state(round);
                    data.extend_from_slice(&claim(round, t));
                    let r = s.command(0, &cdb16(0x89, LBA, 1), &data, 0).unwrap();
                    // GOOD, or CHECK CONDITION with sense key MISCOMPARE (0Eh).
                    let won = match r.status {
                        0 => true,
                        2 => {
                            assert_eq!(r.sense.get(2).map(|k| k & 0x0f), Some(0x0e), "{r:?}");
                            false
                        }
                        other => panic!("status {other:#x}: {r:?}"),
                    };
                    outcomes.push(won);
                    barrier.wait();
                    barrier.wait();
                }
                outcomes
            })
        })
        .collect();
    let mut winners_seen = Vec::new();
    for round in 0..ROUNDS {
        barrier.wait(); // go
        barrier.wait(); // everyone answered
        let r = admin
            .command(0, &cdb16(0x88, LBA, 1), &[], BS as u32)
            .unwrap();
        assert_eq!(r.status, 0);
        let winner = (0..SESSIONS).find(|&t| r.data_in == claim(round, t));
        let Some(winner) = winner else {
            panic!(
                "round {round}: torn or unexpected block: {:?}",
                &r.data_in[..16]
            )
        };
        winners_seen.push(winner);
        // Back to a known state for the next round.
        let w = admin
            .command(0, &cdb16(0x8a, LBA, 1), &state(round + 1), 0)
            .unwrap();
        assert_eq!(w.status, 0);
        barrier.wait(); // next round
    }
    let outcomes: Vec<Vec<bool>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for round in 0..ROUNDS as usize {
        let wins: Vec<usize> = (0..SESSIONS).filter(|&t| outcomes[t][round]).collect();
        assert_eq!(
            wins,
            vec![winners_seen[round]],
            "round {round}: exactly one winner, the one whose data is there"
        );
    }
    drop(vitd);
}

/// COMPARE AND WRITE is atomic against a WRITE SAME of the same block from another session: the
/// WRITE SAME lands before the compare (which then fails) or after the write, never between
/// them, so the block always ends with the WRITE SAME's pattern.
#[test]
fn compare_and_write_is_atomic_against_write_same() {
    const ROUNDS: u64 = 150;
    let ds = Datastore::new();
    ds.target("ws", &[]);
    ds.lun("ws", 0, "8M");
    let vitd = ds.start();
    let port = ds.port;
    let session = |name: &str, isid: u8| {
        let mut s = login(
            port,
            &format!("iqn.2026-11.io.vit:{name}"),
            &iqn("ws"),
            [0x80, 0, 0, 0, 2, isid],
        );
        s.test_unit_ready().unwrap();
        s
    };
    let mut admin = session("ws-admin", 0);
    let pattern = |r: u64| {
        let mut b = vec![0x55; BS];
        b[..8].copy_from_slice(&(r + 1000).to_le_bytes());
        b
    };
    let barrier = Arc::new(Barrier::new(3));
    let racers: Vec<_> = (0..2u8)
        .map(|t| {
            let barrier = barrier.clone();
            let mut s = session(&format!("ws-{t}"), t + 1);
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    barrier.wait();
                    let r = if t == 0 {
                        let mut data = state(round);
                        data.extend_from_slice(&claim(round, 0));
                        s.command(0, &cdb16(0x89, LBA, 1), &data, 0).unwrap()
                    } else {
                        s.command(0, &cdb16(0x93, LBA, 1), &pattern(round), 0)
                            .unwrap()
                    };
                    // WRITE SAME succeeds; COMPARE AND WRITE succeeds or miscompares.
                    assert!(
                        r.status == 0 || t == 0 && r.sense.get(2).map(|k| k & 0x0f) == Some(0x0e),
                        "{r:?}"
                    );
                    barrier.wait();
                }
            })
        })
        .collect();
    for round in 0..ROUNDS {
        let w = admin
            .command(0, &cdb16(0x8a, LBA, 1), &state(round), 0)
            .unwrap();
        assert_eq!(w.status, 0);
        barrier.wait(); // go
        barrier.wait(); // both answered
        let r = admin
            .command(0, &cdb16(0x88, LBA, 1), &[], BS as u32)
            .unwrap();
        assert_eq!(r.status, 0);
        assert!(
            r.data_in == pattern(round),
            "round {round}: the WRITE SAME landed inside the COMPARE AND WRITE: {:?}",
            &r.data_in[..16]
        );
    }
    for r in racers {
        r.join().unwrap();
    }
    drop(vitd);
}
