//! Persistent reservations registered with APTPL survive a restart of vitd (the state is kept
//! beside the LUN, written atomically); without APTPL they do not.

mod common;
use common::*;
use vit::iscsi::initiator::{Session, login};

fn register(s: &mut Session, key: u64, aptpl: bool) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f; // PERSISTENT RESERVE OUT
    cdb[1] = 0x00; // REGISTER
    cdb[8] = 24; // parameter list length
    let mut params = vec![0u8; 24];
    params[8..16].copy_from_slice(&key.to_be_bytes());
    params[20] = u8::from(aptpl);
    let r = s.command(0, &cdb, &params, 0).unwrap();
    assert_eq!(r.status, 0, "REGISTER: {r:?}");
}

fn read_keys(s: &mut Session) -> Vec<u64> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5e; // PERSISTENT RESERVE IN, READ KEYS
    cdb[8] = 255;
    let r = s.command(0, &cdb, &[], 255).unwrap();
    assert_eq!(r.status, 0, "READ KEYS: {r:?}");
    let len = u32::from_be_bytes(r.data_in[4..8].try_into().unwrap()) as usize;
    r.data_in[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

fn session(ds: &Datastore, isid: u8) -> Session {
    let mut s = login(
        ds.port,
        "iqn.2026-11.io.vit:pr-host",
        &iqn("pr"),
        [0x80, 0, 0, 0, 2, isid],
    );
    s.test_unit_ready().unwrap(); // the power-on unit attention
    s
}

#[test]
fn aptpl_registrations_survive_a_restart() {
    let ds = Datastore::new();
    ds.target("pr", &[]);
    let descriptor = ds.lun("pr", 0, "8M");
    let mut vitd = ds.start();
    let mut s = session(&ds, 1);
    register(&mut s, 0x1122_3344_5566_7788, true);
    assert_eq!(read_keys(&mut s), vec![0x1122_3344_5566_7788]);
    assert!(
        descriptor.with_extension("pr").is_file(),
        "APTPL state is saved beside the LUN"
    );
    drop(s);
    assert!(vitd.stop().success());
    let mut vitd = ds.start();
    let mut s = session(&ds, 2);
    assert_eq!(
        read_keys(&mut s),
        vec![0x1122_3344_5566_7788],
        "{}",
        vitd.log_text()
    );
    drop(s);
    assert!(vitd.stop().success());

    // Registered without APTPL: the saved state goes, and so does the key after a restart.
    let mut vitd = ds.start();
    let mut s = session(&ds, 3);
    register(&mut s, 0x99, false);
    drop(s);
    assert!(vitd.stop().success());
    let _vitd = ds.start();
    let mut s = session(&ds, 4);
    assert!(!read_keys(&mut s).contains(&0x99));
}
