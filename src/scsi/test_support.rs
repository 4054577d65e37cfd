//! What the device server's command-level tests (`tests.rs`, `tests_sbc.rs`) share: one
//! command run through [`execute_with_pr`] and its outcome taken apart, and CDB builders.

use super::lun::*;
use super::pr::PrState;

/// One command's outcome and the Data-In it produced.
pub(super) struct Run {
    pub(super) outcome: Outcome,
    pub(super) data: Vec<u8>,
}

/// Runs one command on `lun` of `s` for nexus `n`, with the LUN's reservation state if given.
pub(super) fn exec_on(
    s: &DeviceServer,
    n: &mut Nexus,
    pr: Option<&mut PrState>,
    lun: u16,
    cdb: &[u8],
    data_out: &[u8],
) -> Run {
    let mut buf = vec![0u8; 4096];
    let req = Request {
        lun: encode_lun(lun),
        cdb,
        data_out,
    };
    let outcome = execute_with_pr(s, n, &req, &mut buf, pr);
    let len = match outcome {
        Outcome::Done(c) => c.data_len,
        Outcome::Io(_) => 0,
    };
    buf.truncate(len);
    Run { outcome, data: buf }
}

/// The completion of a command answered in place (panics on an I/O request).
pub(super) fn done(r: &Run) -> Completion {
    match r.outcome {
        Outcome::Done(c) => c,
        Outcome::Io(io) => panic!("expected completion, got {io:?}"),
    }
}

/// The I/O request of a media command (panics on a completion).
pub(super) fn io(r: &Run) -> IoRequest {
    match r.outcome {
        Outcome::Io(io) => io,
        Outcome::Done(c) => panic!("expected I/O, got {c:?}"),
    }
}

/// (key, asc, ascq, sense-key-specific bytes) of a CHECK CONDITION.
pub(super) fn sense_of(c: Completion) -> (u8, u8, u8, [u8; 3]) {
    assert_eq!(c.status, Status::CheckCondition, "{c:?}");
    let s = c.sense.expect("sense data");
    let b = s.as_bytes();
    (b[2], b[12], b[13], [b[15], b[16], b[17]])
}

pub(super) fn good(r: &Run) {
    let c = done(r);
    assert_eq!(c.status, Status::Good, "{c:?}");
}

pub(super) fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

pub(super) fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}
