//! Mutated traffic against a running vitd. Seed streams of real sessions (logins with no
//! authentication, CHAP and mutual CHAP, with and without CRC32C digests; discovery with
//! SendTargets; SCSI commands with immediate data, R2T-solicited Data-Out, COMPARE AND WRITE,
//! WRITE SAME, UNMAP, reservations, task management, NOP-Out, Text, SNACK, Logout) are mutated
//! (bits of the header flipped, lengths set huge, zero or odd, opcodes swapped, AHS announced,
//! data cut short, PDUs duplicated, dropped, reordered and spliced from other sessions, digests
//! spoiled, junk inserted, the stream cut) and replayed, each on its own connection, cut into
//! random TCP segments, by several workers at once. Meanwhile a watchdog session writes and
//! reads back through vitd and must keep making progress. Every byte vitd sends back must frame
//! as target PDUs (digests right once negotiated). At the end vitd must be alive, log in a new
//! session and answer its command at once, have logged no panic, and be back to its threads and
//! descriptors.
//!
//! The seed is fixed unless `VIT_FUZZ_SEED` names another; `VIT_FUZZ_SECS` (default 6) is how
//! long the workers run (at most 1000 connections a second), `VIT_FUZZ_WORKERS` (default 12) how
//! many, `VIT_FUZZ_LOG` vitd's RUST_LOG. vitd's resident size is printed at the start, every
//! 30 s, at its peak and at the end.

mod common;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vit::iscsi::chap::{MAX_BINARY_LEN, chap_response, decode_binary};
use vit::iscsi::digest::{data_digest, header_digest};
use vit::iscsi::initiator::{Session, try_login_with};
use vit::iscsi::pdu::{
    BHS_LEN, DataOut, LoginRequest, LogoutRequest, NopOut, ScsiCommand, SnackRequest, TargetPdu,
    TaskMgmtRequest, TextRequest, set_data_segment_length,
};

const FUZZER: &str = "iqn.2026-11.io.vit:fuzzer";
/// What the login text carries until the target's challenge is known.
const CHAP_R_PLACEHOLDER: &str = "CHAP_R=0x00000000000000000000000000000000";
/// The mutual CHAP challenge the fuzzer sends (any 16 bytes).
const OUR_CHALLENGE: &str = "CHAP_I=7\0CHAP_C=0x0123456789abcdef0123456789abcdef\0";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the replayer fills in from the target's answers before sending a PDU.
#[derive(Clone, Copy)]
enum Fix {
    None,
    /// The CHAP response to the challenge of the login so far, with this secret.
    ChapResponse(&'static [u8]),
}

#[derive(Clone)]
struct Pdu {
    bhs: [u8; BHS_LEN],
    ahs: Vec<u8>,
    data: Vec<u8>,
    /// After the final login request: digests apply where the session negotiates them.
    ffp: bool,
    fix: Fix,
    bad_header_digest: bool,
    bad_data_digest: bool,
    /// Junk: `data` goes on the wire as it is.
    raw: bool,
}

/// Whether a session's full feature phase carries header and data digests.
type Digests = (bool, bool);

struct Seed {
    name: String,
    digests: Digests,
    pdus: Vec<Pdu>,
}

/// A CHAP login's user and secret, and whether it asks the target to authenticate too.
type Chap = (&'static str, &'static [u8], bool);

/// Builds one session's PDUs as a real initiator would number them.
struct Builder {
    pdus: Vec<Pdu>,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
    /// The TTT vitd will give its next R2T (it numbers them from 1 on each connection).
    ttt: u32,
    ffp: bool,
    /// The largest data segment vitd takes: 8192 (the default) unless the login had an
    /// operational stage, where vitd declares more.
    max_segment: u32,
    /// The ITT and TTT of a Text Request continued (C bit) by the next one.
    text_continued: Option<(u32, u32)>,
    rng: StdRng,
}

fn bhs_of(encode: impl FnOnce(&mut [u8; BHS_LEN])) -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    encode(&mut b);
    b
}

impl Builder {
    fn new(seed: u64) -> Builder {
        Builder {
            pdus: Vec::new(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 0x100,
            ttt: 1,
            ffp: false,
            text_continued: None,
            max_segment: 65536,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn push(&mut self, mut bhs: [u8; BHS_LEN], data: Vec<u8>, fix: Fix) {
        set_data_segment_length(&mut bhs, data.len() as u32);
        self.pdus.push(Pdu {
            bhs,
            ahs: Vec::new(),
            data,
            ffp: self.ffp,
            fix,
            bad_header_digest: false,
            bad_data_digest: false,
            raw: false,
        });
    }

    fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// One Login Request from stage `csg` to `nsg` (`transit`), carrying `text`.
    fn login(&mut self, isid: [u8; 6], (csg, nsg, transit): (u8, u8, bool), text: &str, fix: Fix) {
        let req = LoginRequest {
            immediate: true,
            transit,
            csg,
            nsg,
            isid,
            itt: 1,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ..Default::default()
        };
        self.push(bhs_of(|b| req.encode(b)), text.as_bytes().to_vec(), fix);
        self.exp_stat_sn += 1;
        if transit && nsg == 3 {
            self.ffp = true;
        }
    }

    fn operational(&self, digests: bool) -> String {
        let d = if digests { "CRC32C" } else { "None" };
        let mrdsl = [512, 8192, 65536, 262144][self.itt as usize % 4];
        format!(
            "HeaderDigest={d}\0DataDigest={d}\0MaxRecvDataSegmentLength={mrdsl}\0\
             ImmediateData=Yes\0InitialR2T=No\0MaxBurstLength=262144\0FirstBurstLength=65536\0\
             MaxConnections=1\0ErrorRecoveryLevel=0\0MaxOutstandingR2T=1\0\
             DefaultTime2Wait=2\0DefaultTime2Retain=0\0"
        )
    }

    /// A normal session's login to `target`, `auth` being (user, secret, mutual).
    fn login_normal(&mut self, target: &str, auth: Option<Chap>, digests: bool, isid: [u8; 6]) {
        let head = format!("InitiatorName={FUZZER}\0TargetName={target}\0SessionType=Normal\0");
        let op = self.operational(digests);
        match auth {
            None if self.rng.random_bool(0.3) => {
                // Straight from security to full feature phase.
                self.max_segment = 8192;
                self.login(
                    isid,
                    (0, 3, true),
                    &format!("{head}AuthMethod=None\0{op}"),
                    Fix::None,
                );
            }
            None => {
                self.login(
                    isid,
                    (0, 1, true),
                    &format!("{head}AuthMethod=None\0"),
                    Fix::None,
                );
                self.login(isid, (1, 3, true), &op, Fix::None);
            }
            Some((user, secret, mutual)) => {
                self.login(
                    isid,
                    (0, 1, false),
                    &format!("{head}AuthMethod=CHAP\0"),
                    Fix::None,
                );
                self.login(isid, (0, 1, false), "CHAP_A=5\0", Fix::None);
                let ours = if mutual { OUR_CHALLENGE } else { "" };
                let text = format!("CHAP_N={user}\0{CHAP_R_PLACEHOLDER}\0{ours}");
                self.login(isid, (0, 1, true), &text, Fix::ChapResponse(secret));
                self.login(isid, (1, 3, true), &op, Fix::None);
            }
        }
    }

    /// A SCSI command; returns its ITT and the TTT vitd gives its task (one per command).
    fn scsi(&mut self, lun: u8, cdb: &[u8], edtl: (u32, u32), immediate: Vec<u8>) -> (u32, u32) {
        let (write, read) = edtl;
        let itt = self.next_itt();
        let ttt = self.ttt;
        self.ttt += 1;
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        let cmd = ScsiCommand {
            final_bit: true,
            read: read > 0,
            write: write > 0,
            attr: 1,
            lun: u64::from(lun) << 48,
            itt,
            expected_data_length: write.max(read),
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: c,
            ..Default::default()
        };
        self.cmd_sn += 1;
        self.exp_stat_sn += 1;
        self.push(bhs_of(|b| cmd.encode(b)), immediate, Fix::None);
        (itt, ttt)
    }

    /// Data-Out PDUs of `itt` for bytes `from..to` under `ttt`, in pieces of `piece` bytes.
    fn data_out(&mut self, (itt, ttt): (u32, u32), lun: u8, (from, to): (u32, u32), piece: u32) {
        let mut off = from;
        let mut sn = 0;
        while off < to {
            let n = piece.min(to - off);
            let d = DataOut {
                final_bit: off + n == to,
                lun: u64::from(lun) << 48,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn: sn,
                buffer_offset: off,
                ..Default::default()
            };
            let data = self.bytes(n as usize);
            self.push(bhs_of(|b| d.encode(b)), data, Fix::None);
            off += n;
            sn += 1;
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.rng.fill(&mut v[..]);
        v
    }

    /// A Text Request; `cont` sets its C bit, and the next one goes on with its ITT and the TTT
    /// vitd answers it with.
    fn text(&mut self, text: &[u8], cont: bool) {
        let (itt, ttt) = match self.text_continued.take() {
            Some(tags) => tags,
            None => (self.next_itt(), 0xffff_ffff),
        };
        let req = TextRequest {
            final_bit: !cont,
            cont,
            itt,
            ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ..Default::default()
        };
        self.cmd_sn += 1;
        if cont {
            self.text_continued = Some((itt, self.ttt));
            self.ttt += 1;
        }
        self.push(bhs_of(|b| req.encode(b)), text.to_vec(), Fix::None);
    }

    fn logout(&mut self) {
        let req = LogoutRequest {
            immediate: true,
            reason: 0,
            itt: self.next_itt(),
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ..Default::default()
        };
        self.push(bhs_of(|b| req.encode(b)), Vec::new(), Fix::None);
    }

    /// `n` full-feature-phase operations of a normal session, chosen at random.
    fn operations(&mut self, n: usize) {
        for _ in 0..n {
            let lun = self.rng.random_range(0..2u8);
            let lba = self.rng.random_range(0..16_000u32);
            match self.rng.random_range(0..20) {
                0 => {
                    self.scsi(lun, &[0; 6], (0, 0), Vec::new());
                }
                1 => {
                    let page = [0u8, 0x80, 0x83, 0xb0, 0xb2][self.rng.random_range(0..5)];
                    let evpd = u8::from(page != 0);
                    self.scsi(lun, &[0x12, evpd, page, 0, 0xff, 0], (0, 255), Vec::new());
                }
                2 => {
                    let cdb = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
                    self.scsi(lun, &cdb, (0, 32), Vec::new());
                }
                3 => {
                    let cdb = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
                    self.scsi(0, &cdb, (0, 4096), Vec::new());
                }
                4 | 5 => {
                    let blocks = self.rng.random_range(1..=256u16);
                    self.scsi(
                        lun,
                        &rw10(0x28, lba, blocks),
                        (0, u32::from(blocks) * 512),
                        Vec::new(),
                    );
                }
                6 | 7 => {
                    let most = (self.max_segment / 512) as u16;
                    let blocks = self.rng.random_range(1..=most);
                    let data = self.bytes(usize::from(blocks) * 512);
                    let len = data.len() as u32;
                    self.scsi(lun, &rw10(0x2a, lba, blocks), (len, 0), data);
                }
                8 => {
                    // Past the first burst: the rest goes as Data-Out when vitd's R2T asks.
                    let blocks = self.rng.random_range(129..=640u16);
                    let len = u32::from(blocks) * 512;
                    let imm = if self.rng.random_bool(0.5) {
                        self.max_segment
                    } else {
                        0
                    };
                    let data = self.bytes(imm as usize);
                    let tags = self.scsi(lun, &rw10(0x2a, lba, blocks), (len, 0), data);
                    let piece =
                        [512, 8192, 65536][self.rng.random_range(0..3)].min(self.max_segment);
                    let mut off = imm;
                    while off < len {
                        let end = (off + 262_144).min(len);
                        self.data_out(tags, lun, (off, end), piece);
                        off = end;
                    }
                }
                9 => {
                    let mut cdb = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
                    self.scsi(lun, &cdb, (0, 0), Vec::new());
                }
                10 => {
                    let blocks = self.rng.random_range(1..=64u32);
                    let mut cdb = cdb16(0x93, u64::from(lba), blocks);
                    cdb[1] = if self.rng.random_bool(0.5) { 0x08 } else { 0 };
                    let data = self.bytes(512);
                    self.scsi(lun, &cdb, (512, 0), data);
                }
                11 => {
                    let mut list = vec![0u8; 24];
                    list[1] = 22;
                    list[3] = 16;
                    list[8..16].copy_from_slice(&u64::from(lba).to_be_bytes());
                    list[16..20].copy_from_slice(&8u32.to_be_bytes());
                    let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
                    self.scsi(lun, &cdb, (24, 0), list);
                }
                12 => {
                    let data = self.bytes(1024);
                    self.scsi(lun, &cdb16(0x89, u64::from(lba), 1), (1024, 0), data);
                }
                13 => {
                    // PERSISTENT RESERVE OUT: REGISTER a key, or RESERVE with it.
                    let sa = self.rng.random_range(0..2u8);
                    let mut list = vec![0u8; 24];
                    list[if sa == 0 { 8 } else { 0 }..][..8]
                        .copy_from_slice(&0xfeedu64.to_be_bytes());
                    let cdb = [
                        0x5f,
                        sa,
                        if sa == 1 { 0x03 } else { 0 },
                        0,
                        0,
                        0,
                        0,
                        0,
                        24,
                        0,
                    ];
                    self.scsi(lun, &cdb, (24, 0), list);
                }
                14 => {
                    let immediate = self.rng.random_bool(0.5);
                    let nop = NopOut {
                        immediate,
                        itt: self.next_itt(),
                        ttt: 0xffff_ffff,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                        ..Default::default()
                    };
                    if !immediate {
                        self.cmd_sn += 1;
                    }
                    let n = self.rng.random_range(0..2000);
                    let data = self.bytes(n);
                    self.push(bhs_of(|b| nop.encode(b)), data, Fix::None);
                }
                15 | 16 => {
                    let function = [1u8, 1, 2, 3, 4, 5, 6, 7, 8, 9][self.rng.random_range(0..10)];
                    let tmf = TaskMgmtRequest {
                        immediate: true,
                        function,
                        lun: u64::from(lun) << 48,
                        itt: self.itt + 1,
                        referenced_task_tag: self.itt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                        ref_cmd_sn: self.cmd_sn.wrapping_sub(1),
                        ..Default::default()
                    };
                    self.itt += 1;
                    self.push(bhs_of(|b| tmf.encode(b)), Vec::new(), Fix::None);
                }
                17 => {
                    let text: &[u8] = match self.rng.random_range(0..3) {
                        0 => b"SendTargets=All\0",
                        1 => b"MaxRecvDataSegmentLength=4096\0",
                        _ => b"X-vit.fuzz=1\0",
                    };
                    self.text(text, false);
                }
                18 => {
                    let snack = SnackRequest {
                        snack_type: self.rng.random_range(0..4),
                        itt: self.itt,
                        ttt: 0xffff_ffff,
                        exp_stat_sn: self.exp_stat_sn,
                        run_length: 1,
                        ..Default::default()
                    };
                    self.push(bhs_of(|b| snack.encode(b)), Vec::new(), Fix::None);
                }
                _ => {
                    // A large read of the memory LUN, more than one Data-In.
                    self.scsi(
                        1,
                        &cdb16(0x88, u64::from(lba / 4), 2048),
                        (0, 1 << 20),
                        Vec::new(),
                    );
                }
            }
        }
        if self.rng.random_bool(0.7) {
            self.logout();
        }
    }
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// The seed sessions: normal sessions to target `f` (no authentication), `c` (CHAP) and `m`
/// (mutual CHAP), and discovery sessions, each with and without digests.
fn seeds(seed: u64) -> Vec<Seed> {
    let mut out = Vec::new();
    let auths: [(&str, Option<Chap>); 3] = [
        ("f", None),
        ("c", Some(("alice", b"alicesecret12", false))),
        ("m", Some(("bob", b"bobsecret1234", true))),
    ];
    let mut k = 0u64;
    for (alias, auth) in auths {
        for digests in [false, true] {
            for variant in 0..3u8 {
                k += 1;
                let mut b = Builder::new(seed ^ (k << 32));
                b.itt += u32::from(variant);
                let isid = [0x80, 0, 0, 0, variant, k as u8];
                b.login_normal(&iqn(alias), auth, digests, isid);
                let n = [4, 12, 30][usize::from(variant)];
                b.operations(n);
                out.push(Seed {
                    name: format!("{alias} digests={digests} #{variant}"),
                    digests: (digests, digests),
                    pdus: b.pdus,
                });
            }
        }
    }
    for digests in [false, true] {
        k += 1;
        let mut b = Builder::new(seed ^ (k << 32));
        let d = if digests { "CRC32C" } else { "None" };
        let text = format!(
            "InitiatorName={FUZZER}\0SessionType=Discovery\0AuthMethod=None\0\
             HeaderDigest={d}\0DataDigest={d}\0MaxRecvDataSegmentLength=512\0"
        );
        b.login([0x80, 0, 0, 1, 0, k as u8], (0, 3, true), &text, Fix::None);
        b.text(b"SendTar", true);
        b.text(b"gets=All\0", false);
        b.text(b"SendTargets=All\0", false);
        b.text(&format!("SendTargets={}\0", iqn("f")).into_bytes(), false);
        b.logout();
        out.push(Seed {
            name: format!("discovery digests={digests}"),
            digests: (digests, digests),
            pdus: b.pdus,
        });
    }
    out
}

/// Runs `client` (given the port of a relay in front of vitd on `port`) and returns what each
/// of its connections sent and was answered: (initiator's bytes, target's bytes).
fn record(port: u16, client: impl FnOnce(u16)) -> Vec<(Vec<u8>, Vec<u8>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let accept = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut pairs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok((c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                let t = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let up = relay(c.try_clone().unwrap(), t.try_clone().unwrap());
                pairs.push((up, relay(t, c)));
            }
            pairs
        })
    };
    client(relay_port);
    stop.store(true, Ordering::Relaxed);
    let pairs = accept.join().unwrap();
    pairs
        .into_iter()
        .map(|(u, d)| (u.join().unwrap(), d.join().unwrap()))
        .collect()
}

/// The digests a target's bytes `down` settle in their final Login Response.
fn negotiated(down: &[u8]) -> Digests {
    let mut text = Vec::new();
    let mut at = 0;
    while at + BHS_LEN <= down.len() && down[at] & 0x3f == 0x23 {
        let dsl = u32::from_be_bytes([0, down[at + 5], down[at + 6], down[at + 7]]) as usize;
        let end = (at + BHS_LEN + dsl).min(down.len());
        text.extend_from_slice(&down[at + BHS_LEN..end]);
        at += BHS_LEN + dsl.next_multiple_of(4);
    }
    let text = String::from_utf8_lossy(&text);
    (
        text.contains("HeaderDigest=CRC32C"),
        text.contains("DataDigest=CRC32C"),
    )
}

/// A recorded connection as a seed: the initiator's PDUs, digests as negotiated, the CHAP
/// response left for the replay to compute for the challenge it gets.
fn recorded_seed(name: String, up: &[u8], down: &[u8]) -> Seed {
    let digests = negotiated(down);
    let mut pdus = Vec::new();
    let mut at = 0;
    while at + BHS_LEN <= up.len() {
        let bhs: [u8; BHS_LEN] = up[at..at + BHS_LEN].try_into().unwrap();
        let login = bhs[0] & 0x3f == 0x03;
        let ahs = usize::from(bhs[4]) * 4;
        let dsl = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let h = if digests.0 && !login { 4 } else { 0 };
        let d = if digests.1 && !login && dsl > 0 { 4 } else { 0 };
        let data_at = at + BHS_LEN + ahs + h;
        let end = data_at + dsl.next_multiple_of(4) + d;
        if end > up.len() {
            break;
        }
        let mut data = up[data_at..data_at + dsl].to_vec();
        let mut fix = Fix::None;
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(r) = text.find("CHAP_R=0x") {
            let secret: &'static [u8] = if text.contains("CHAP_N=bob") {
                b"bobsecret1234"
            } else {
                b"alicesecret12"
            };
            let n = CHAP_R_PLACEHOLDER.len().min(data.len() - r);
            data[r..r + n].copy_from_slice(&CHAP_R_PLACEHOLDER.as_bytes()[..n]);
            fix = Fix::ChapResponse(secret);
        }
        pdus.push(Pdu {
            bhs,
            ahs: up[at + BHS_LEN..at + BHS_LEN + ahs].to_vec(),
            data,
            ffp: !login,
            fix,
            bad_header_digest: false,
            bad_data_digest: false,
            raw: false,
        });
        at = end;
    }
    Seed {
        name,
        digests,
        pdus,
    }
}

/// A client run against the relay's port.
type Client = Box<dyn FnOnce(u16)>;

/// Sessions of real initiators recorded through a relay: libiscsi's tools (no authentication,
/// CHAP, mutual CHAP with header digests, discovery with a login to each target) and fio's
/// libiscsi engine (writes past the first burst, solicited by R2Ts, and reads). None where the
/// clients are not installed.
fn recorded_seeds(port: u16) -> Vec<Seed> {
    let mut out = Vec::new();
    let url = |p: u16, creds: &str, alias: &str, lun: u32, extra: &str| {
        format!("iscsi://{creds}127.0.0.1:{p}/{}/{lun}{extra}", iqn(alias))
    };
    let mut runs: Vec<(&str, Client)> = Vec::new();
    if have("iscsi-inq") && have("iscsi-ls") && have("iscsi-readcapacity16") {
        runs.push((
            "iscsi-inq",
            Box::new(move |p| {
                client_within(30, "iscsi-inq", &[&url(p, "", "f", 0, "")]);
            }),
        ));
        runs.push((
            "iscsi-readcapacity16 chap",
            Box::new(move |p| {
                let u = url(p, "alice%alicesecret12@", "c", 0, "");
                client_within(30, "iscsi-readcapacity16", &[&u]);
            }),
        ));
        runs.push((
            "iscsi-inq mutual chap crc32c",
            Box::new(move |p| {
                let extra = "?target_user=tgt&target_password=tgtsecret1234&header_digest=crc32c";
                let u = url(p, "bob%bobsecret1234@", "m", 0, extra);
                client_within(30, "iscsi-inq", &["-e", "1", "-c", "0x83", &u]);
            }),
        ));
        runs.push((
            "iscsi-ls",
            Box::new(move |p| {
                // Discovery only: the logins it goes on to make are to the portal that
                // SendTargets names, vitd's own.
                client_within(30, "iscsi-ls", &["-s", &format!("iscsi://127.0.0.1:{p}/")]);
            }),
        ));
    }
    if let Some(fio) = fio() {
        runs.push((
            "fio",
            Box::new(move |p| {
                let u = url(p, "", "f", 1, "").replace(':', "\\:");
                run_fio(
                    &fio,
                    60,
                    &[
                        "--name=seed",
                        "--ioengine=libiscsi",
                        &format!("--filename={u}"),
                        "--rw=randrw",
                        "--bs=128k",
                        "--size=2m",
                        "--io_size=1m",
                        "--iodepth=4",
                        "--verify=crc32c",
                    ],
                );
            }),
        ));
    }
    for (name, run) in runs {
        for (k, (up, down)) in record(port, run).into_iter().enumerate() {
            let seed = recorded_seed(format!("{name} #{k}"), &up, &down);
            let ops: Vec<u8> = seed.pdus.iter().map(|p| p.bhs[0] & 0x3f).collect();
            eprintln!("recorded {}: {ops:02x?}", seed.name);
            if !seed.pdus.is_empty() {
                out.push(seed);
            }
        }
    }
    out
}

/// One replay: the PDUs, whether the session negotiates digests, and where the stream is cut.
struct Case {
    name: String,
    digests: Digests,
    pdus: Vec<Pdu>,
    cut: Option<usize>,
    /// Half-close after the last byte (vitd sees EOF) rather than a plain close.
    half_close: bool,
    /// Otherwise, how long vitd's answers may pause (5 s at most in all) before the close.
    quiet: Duration,
}

fn interesting_u32(rng: &mut StdRng, old: u32) -> u32 {
    match rng.random_range(0..8) {
        0 => 0,
        1 => 0xffff_ffff,
        2 => 0x7fff_ffff,
        3 => 0x8000_0000,
        4 => old.wrapping_add(1),
        5 => old.wrapping_sub(1),
        6 => old.wrapping_add(rng.random_range(2..1 << 16)),
        _ => rng.random(),
    }
}

fn mutate(seeds: &[Seed], rng: &mut StdRng) -> Case {
    let seed = &seeds[rng.random_range(0..seeds.len())];
    let mut pdus = seed.pdus.clone();
    let mut cut = None;
    let ops = if rng.random_bool(0.1) {
        0
    } else {
        rng.random_range(1..=4)
    };
    let mut what = Vec::new();
    for _ in 0..ops {
        if pdus.is_empty() {
            break;
        }
        let i = rng.random_range(0..pdus.len());
        let op = rng.random_range(0..17);
        what.push(format!("{op}@{i}"));
        let p = &mut pdus[i];
        match op {
            0 => {
                for _ in 0..rng.random_range(1..=4) {
                    let bit = rng.random_range(0..BHS_LEN * 8);
                    p.bhs[bit / 8] ^= 1 << (bit % 8);
                }
            }
            1 => {
                let len = match rng.random_range(0..8) {
                    0 => 0,
                    1 => 0xff_ffff,
                    2 => 0xff_fffc,
                    3 => p.data.len() as u32 + rng.random_range(1..4),
                    4 => (p.data.len() as u32).saturating_sub(rng.random_range(1..4)),
                    5 => 65537,
                    6 => 262_145,
                    _ => rng.random_range(0..1 << 24),
                };
                set_data_segment_length(&mut p.bhs, len);
            }
            2 => {
                let words = rng.random_range(1..=255u8);
                p.bhs[4] = words;
                if rng.random_bool(0.5) {
                    // The AHS it announces, or some of it: extended CDB or bidirectional length.
                    let n = usize::from(words) * 4;
                    let mut ahs = vec![0u8; n];
                    rng.fill(&mut ahs[..]);
                    if n >= 4 {
                        let l = (n - 3) as u16;
                        ahs[..2].copy_from_slice(&l.to_be_bytes());
                        ahs[2] = rng.random_range(0..3);
                    }
                    ahs.truncate(rng.random_range(0..=n));
                    p.ahs = ahs;
                }
            }
            3 => {
                let ops = [
                    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x1c, 0x1d, 0x1e, 0x20, 0x21,
                    0x23, 0x25, 0x31, 0x3f,
                ];
                let op = if rng.random_bool(0.8) {
                    ops[rng.random_range(0..ops.len())]
                } else {
                    rng.random_range(0..64)
                };
                p.bhs[0] = (p.bhs[0] & 0xc0) | op;
            }
            4 => {
                let n = rng.random_range(0..=p.data.len());
                p.data.truncate(n);
            }
            5 => {
                let dup = p.clone();
                let j = rng.random_range(0..=pdus.len());
                pdus.insert(j, dup);
            }
            6 => {
                let j = rng.random_range(0..pdus.len());
                pdus.swap(i, j);
            }
            7 => {
                let other = &seeds[rng.random_range(0..seeds.len())].pdus;
                let a = rng.random_range(0..other.len());
                let b = rng.random_range(a..=other.len().min(a + 6));
                let j = rng.random_range(0..=pdus.len());
                pdus.splice(j..j, other[a..b].iter().cloned());
            }
            8 => {
                pdus.remove(i);
            }
            9 => {
                let at = [8, 12, 16, 20, 24, 28, 32, 36, 40, 44][rng.random_range(0..10)];
                let old = u32::from_be_bytes(p.bhs[at..at + 4].try_into().unwrap());
                let new = interesting_u32(rng, old);
                p.bhs[at..at + 4].copy_from_slice(&new.to_be_bytes());
            }
            10 => {
                if rng.random_bool(0.5) {
                    p.bad_header_digest = true;
                } else {
                    p.bad_data_digest = true;
                }
            }
            11 => match rng.random_range(0..4) {
                0 if !p.data.is_empty() => {
                    for _ in 0..rng.random_range(1..8) {
                        let at = rng.random_range(0..p.data.len());
                        p.data[at] = [0, b'=', b'\n', 0xff, rng.random()][rng.random_range(0..5)];
                    }
                }
                1 => {
                    // A long key or value, or many keys.
                    let n = rng.random_range(100..70_000);
                    let mut t = b"X-vit.long=".to_vec();
                    t.resize(t.len() + n, b'a');
                    t.push(0);
                    p.data.extend_from_slice(&t);
                    let len = p.data.len() as u32;
                    set_data_segment_length(&mut p.bhs, len);
                }
                2 => {
                    let keys = [
                        "MaxRecvDataSegmentLength=0",
                        "MaxRecvDataSegmentLength=16777216",
                        "MaxBurstLength=512",
                        "FirstBurstLength=999999999999",
                        "HeaderDigest=CRC32C,None",
                        "ImmediateData=Maybe",
                        "AuthMethod=CHAP,None",
                        "CHAP_A=5,5,5,5",
                        "CHAP_C=0xzz",
                        "CHAP_R=0x",
                        "CHAP_I=300",
                        "SessionType=Discovery",
                        "TargetName=",
                        "MaxConnections=2",
                        "ErrorRecoveryLevel=2",
                        "SendTargets=",
                        "=",
                        "",
                    ];
                    p.data
                        .extend_from_slice(keys[rng.random_range(0..keys.len())].as_bytes());
                    p.data.push(0);
                    let len = p.data.len() as u32;
                    set_data_segment_length(&mut p.bhs, len);
                }
                _ => {
                    let n = p.data.len();
                    p.data = vec![0u8; n];
                    rng.fill(&mut p.data[..]);
                }
            },
            12 => {
                let n = rng.random_range(1..200);
                let mut junk = vec![0u8; n];
                if rng.random_bool(0.7) {
                    rng.fill(&mut junk[..]);
                }
                let j = rng.random_range(0..=pdus.len());
                pdus.insert(
                    j,
                    Pdu {
                        bhs: [0; BHS_LEN],
                        ahs: Vec::new(),
                        data: junk,
                        ffp: false,
                        fix: Fix::None,
                        bad_header_digest: false,
                        bad_data_digest: false,
                        raw: true,
                    },
                );
            }
            13 => p.bhs[1] = rng.random(),
            14 => {
                let lun: u64 = match rng.random_range(0..4) {
                    0 => 0xffff_ffff_ffff_ffff,
                    1 => 0x4000u64 << 48 | rng.random_range(0..0x4000) << 48,
                    2 => u64::from(rng.random_range(0..1024u32)) << 48,
                    _ => rng.random(),
                };
                p.bhs[8..16].copy_from_slice(&lun.to_be_bytes());
            }
            15 => {
                // A CDB byte: another opcode, lengths, flags.
                let at = 32 + rng.random_range(0..16);
                p.bhs[at] = rng.random();
            }
            _ => {
                let total: usize = pdus.iter().map(|p| BHS_LEN + p.data.len() + 8).sum();
                cut = Some(rng.random_range(0..total.max(1)));
            }
        }
    }
    Case {
        name: format!("{} ops [{}]", seed.name, what.join(" ")),
        digests: seed.digests,
        pdus,
        cut,
        half_close: rng.random_bool(0.5),
        quiet: Duration::from_millis(150),
    }
}

/// The PDU as it goes on the wire.
fn frame(p: &Pdu, digests: Digests) -> Vec<u8> {
    if p.raw {
        return p.data.clone();
    }
    let (hd, dd) = (digests.0 && p.ffp, digests.1 && p.ffp);
    let mut w = p.bhs.to_vec();
    w.extend_from_slice(&p.ahs);
    if hd {
        let mut d = header_digest(&p.bhs, &p.ahs);
        if p.bad_header_digest {
            d[0] ^= 1;
        }
        w.extend_from_slice(&d);
    }
    w.extend_from_slice(&p.data);
    w.resize(w.len() + p.data.len().next_multiple_of(4) - p.data.len(), 0);
    if dd && !p.data.is_empty() {
        let mut d = data_digest(&[&p.data]);
        if p.bad_data_digest {
            d[0] ^= 1;
        }
        w.extend_from_slice(&d);
    }
    w
}

/// What the reader learned from the target so far: the text of its Login Responses.
#[derive(Default)]
struct Heard {
    login_text: Vec<u8>,
}

/// Reads all the target sends on `s` until it closes or `stop` (then a little longer), checking
/// that every byte frames as target PDUs: each header decodes, no AHS, digests right once the
/// final Login Response has settled them. With `must_close` (the initiator has ended its side)
/// vitd must close the connection within 5 s of `stop`: nothing it was sent may hold it open;
/// otherwise reading ends once vitd's answers have paused for `quiet` after `stop`.
fn read_answers(
    mut s: TcpStream,
    stop: Arc<AtomicBool>,
    heard: Arc<Mutex<Heard>>,
    (must_close, quiet): (bool, Duration),
) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let (mut ffp, mut hd, mut dd) = (false, false, false);
    let mut stopped_at: Option<Instant> = None;
    let mut last_byte = Instant::now();
    let mut stat_sn: Option<u32> = None;
    let mut reads: std::collections::HashMap<u32, (u32, u32)> = Default::default();
    const UNSURE: u32 = u32::MAX;
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                last_byte = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        // Whole PDUs from the front of `buf`.
        loop {
            if buf.len() < BHS_LEN {
                break;
            }
            let bhs: [u8; BHS_LEN] = buf[..BHS_LEN].try_into().unwrap();
            let pdu = TargetPdu::decode(&bhs)
                .map_err(|e| format!("a header that does not decode ({e:?}): {bhs:02x?}"))?;
            if bhs[4] != 0 {
                return Err(format!("an AHS in {pdu:?}"));
            }
            let dsl = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
            let h = if ffp && hd { 4 } else { 0 };
            let d = if ffp && dd && dsl > 0 { 4 } else { 0 };
            let total = BHS_LEN + h + dsl.next_multiple_of(4) + d;
            if buf.len() < total {
                break;
            }
            if h > 0 && buf[BHS_LEN..BHS_LEN + 4] != header_digest(&bhs, &[]) {
                return Err(format!("wrong header digest on {pdu:?}"));
            }
            let data = &buf[BHS_LEN + h..BHS_LEN + h + dsl];
            if d > 0 && buf[total - 4..total] != data_digest(&[data]) {
                return Err(format!("wrong data digest on {pdu:?}"));
            }
            if let TargetPdu::Login(r) = pdu {
                let mut heard = heard.lock().unwrap();
                heard.login_text.extend_from_slice(data);
                heard.login_text.push(0);
                if r.transit && r.nsg == 3 && r.status_class == 0 {
                    let text = String::from_utf8_lossy(&heard.login_text);
                    ffp = true;
                    hd = text.contains("HeaderDigest=CRC32C");
                    dd = text.contains("DataDigest=CRC32C");
                }
            }
            // Each status a connection carries takes the next StatSN, in the order sent (RFC
            // 7143 §4.2.2.2): Login, SCSI, task management, Text and Logout Responses, Rejects,
            // NOP-Ins answering a NOP-Out, Data-In with status.
            let op = bhs[0] & 0x3f;
            let itt = u32::from_be_bytes(bhs[16..20].try_into().unwrap());
            let status = match op {
                0x21..=0x24 | 0x26 | 0x3f => true,
                0x20 => itt != 0xffff_ffff,
                0x25 => bhs[1] & 0x01 != 0,
                _ => false,
            };
            if status {
                let sn = u32::from_be_bytes(bhs[24..28].try_into().unwrap());
                if let Some(prev) = stat_sn
                    && sn != prev.wrapping_add(1)
                {
                    return Err(format!(
                        "StatSN {sn} after {prev} in {pdu:?}; answers before {seen:02x?}"
                    ));
                }
                stat_sn = Some(sn);
            }
            // A task's Data-In come numbered from 0 with their data contiguous from offset 0
            // (vitd negotiates DataPDUInOrder=Yes), until its status.
            match pdu {
                TargetPdu::DataIn(d) => {
                    let (sn, off) = match reads.remove(&d.itt).unwrap_or((0, 0)) {
                        (UNSURE, _) => (d.data_sn, d.buffer_offset),
                        next => next,
                    };
                    if (d.data_sn, d.buffer_offset) != (sn, off) {
                        return Err(format!(
                            "Data-In {d:?} where DataSN {sn} at offset {off} comes next"
                        ));
                    }
                    if !d.status_present {
                        reads.insert(d.itt, (sn + 1, off + dsl as u32));
                    }
                }
                TargetPdu::ScsiResponse(r) => {
                    reads.remove(&r.itt);
                }
                // The tasks it aborted send nothing more and their tags are free again, while
                // the others go on: whose is the next Data-In of a tag is not known.
                TargetPdu::TaskMgmt(_) => reads.values_mut().for_each(|v| v.0 = UNSURE),
                _ => {}
            }
            if op == 0x3f && dsl != BHS_LEN {
                return Err(format!("a Reject carrying {dsl} bytes, not the header"));
            }
            seen.push(op);
            buf.drain(..total);
        }
        if stop.load(Ordering::Relaxed) {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if must_close && at.elapsed() > Duration::from_secs(5) {
                return Err(format!(
                    "still open 5 s after the initiator's end; answers {seen:02x?}"
                ));
            }
            let paused = at.elapsed().min(last_byte.elapsed()) > quiet;
            if !must_close && (paused || at.elapsed() > Duration::from_secs(5)) {
                break;
            }
        }
    }
    Ok(seen)
}

/// The CHAP response to the challenge in the target's login text, with `secret`.
fn chap_answer(text: &[u8], secret: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(text);
    let get = |k: &str| {
        text.split('\0')
            .filter_map(|p| p.strip_prefix(k))
            .next_back()
    };
    let id: u8 = get("CHAP_I=")?.parse().ok()?;
    let mut buf = [0u8; MAX_BINARY_LEN];
    let challenge = decode_binary("CHAP_C", get("CHAP_C=")?, &mut buf).ok()?;
    let r = chap_response(id, secret, challenge);
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("CHAP_R=0x{hex}"))
}

/// Sends `case` on a connection of its own, in random segments, while reading all vitd answers;
/// returns the opcodes of the PDUs vitd sent.
fn replay(port: u16, case: &Case, rng: &mut StdRng) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(rng.random_bool(0.5)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let heard = Arc::new(Mutex::new(Heard::default()));
    let reader = {
        let (r, stop, heard) = (s.try_clone().unwrap(), stop.clone(), heard.clone());
        let wait = (case.half_close, case.quiet);
        std::thread::spawn(move || read_answers(r, stop, heard, wait))
    };
    let mut sent = 0usize;
    'pdus: for p in &case.pdus {
        let mut p = p.clone();
        if let Fix::ChapResponse(secret) = p.fix {
            let at = p
                .data
                .windows(CHAP_R_PLACEHOLDER.len())
                .position(|w| w == CHAP_R_PLACEHOLDER.as_bytes());
            if let Some(at) = at {
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    if let Some(r) = chap_answer(&heard.lock().unwrap().login_text, secret) {
                        p.data[at..at + r.len()].copy_from_slice(r.as_bytes());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let mut wire = frame(&p, case.digests);
        if let Some(cut) = case.cut
            && sent + wire.len() > cut
        {
            wire.truncate(cut - sent);
        }
        let mut at = 0;
        while at < wire.len() {
            let n = match rng.random_range(0..4) {
                0 => rng.random_range(1..8),
                1 => rng.random_range(1..100),
                _ => wire.len(),
            }
            .min(wire.len() - at);
            if s.write_all(&wire[at..at + n]).is_err() {
                break 'pdus;
            }
            at += n;
            if rng.random_bool(0.05) {
                std::thread::sleep(Duration::from_micros(rng.random_range(50..2000)));
            }
        }
        sent += wire.len();
        if case.cut.is_some_and(|c| sent >= c) {
            break;
        }
    }
    if case.half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    std::thread::sleep(Duration::from_millis(rng.random_range(0..100)));
    stop.store(true, Ordering::Relaxed);
    let r = reader.join().unwrap();
    drop(s);
    r
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A new nexus's first command to a LUN meets a unit attention (29/00): TEST UNIT READY takes it.
fn clear_unit_attention(s: &mut Session, lun: u8) -> Result<(), String> {
    let r = s.command(lun, &[0; 6], &[], 0);
    match r {
        Ok(r) if r.status == 0 || r.sense.get(2) == Some(&6) => Ok(()),
        r => Err(format!("TEST UNIT READY of LUN {lun}: {r:?}")),
    }
}

/// Verified I/O on target `w` (its own LUNs) for as long as `stop` is clear: each write is read
/// back. Returns the number of rounds, or what went wrong; each round's end goes into `last`.
fn watchdog(
    port: u16,
    stop: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
    t0: Instant,
) -> Result<u64, String> {
    let mut s: Session = try_login_with(port, FUZZER, &iqn("w"), [0x80, 0, 0, 2, 0, 1], true)
        .map_err(|e| format!("watchdog login: {e}"))?;
    let mut rng = StdRng::seed_from_u64(7);
    // Each LUN's first command meets the unit attention of vitd's start (29/00): once each.
    for lun in 0..2 {
        let r = s.command(lun, &[0; 6], &[], 0);
        if !r
            .as_ref()
            .is_ok_and(|r| r.status == 0 || r.sense.get(2) == Some(&6))
        {
            return Err(format!("watchdog TEST UNIT READY: {r:?}"));
        }
    }
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        let lun = (rounds % 2) as u8;
        let lba = rng.random_range(0..1024u32) * 8;
        let mut data = vec![0u8; 4096];
        rng.fill(&mut data[..]);
        let w = s
            .command(lun, &rw10(0x2a, lba, 8), &data, 0)
            .map_err(|e| format!("watchdog write {rounds}: {e}"))?;
        if w.status != 0 {
            return Err(format!("watchdog write {rounds}: {w:?}"));
        }
        let r = s
            .command(lun, &rw10(0x28, lba, 8), &[], 4096)
            .map_err(|e| format!("watchdog read {rounds}: {e}"))?;
        if r.status != 0 || r.data_in != data {
            return Err(format!(
                "watchdog read {rounds}: status {}, data differs",
                r.status
            ));
        }
        rounds += 1;
        last.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    Ok(rounds)
}

/// The datastore the fuzz tests serve: `f` (a file LUN 0, a memory LUN 1), the CHAP targets
/// `c` and `m`, and the watchdog's own `w`.
fn fuzz_datastore() -> Datastore {
    let ds = Datastore::new();
    ds.target("f", &[]);
    ds.lun("f", 0, "8M");
    ds.add_lun_body("f", 1, memory_lun(8 << 20, Some("8M")));
    ds.chap_targets();
    ds.target("w", &[]);
    ds.lun("w", 0, "4M");
    ds.add_lun_body("w", 1, memory_lun(4 << 20, Some("4M")));
    ds
}

/// Each seed, unmutated, is a session vitd serves to its end: a Logout at the end is answered
/// (so the mutations start from sessions that work). Each connection is half-closed after its
/// last PDU and read until vitd closes it, so a slow machine only takes longer.
fn seeds_work(port: u16, seeds: &[Seed], vitd: &Vitd) {
    let mut rng = StdRng::seed_from_u64(1);
    for seed in seeds {
        let case = Case {
            name: seed.name.clone(),
            digests: seed.digests,
            pdus: seed.pdus.clone(),
            cut: None,
            half_close: false,
            quiet: Duration::from_secs(1),
        };
        let seen = replay(port, &case, &mut rng).unwrap_or_else(|e| panic!("{}: {e}", seed.name));
        let logs_out = seed.pdus.last().is_some_and(|p| p.bhs[0] & 0x3f == 0x06);
        eprintln!("seed {}: {seen:02x?}", seed.name);
        assert!(
            !logs_out || seen.last() == Some(&0x26),
            "seed {}: {seen:02x?}\n{}",
            seed.name,
            vitd.log_text()
        );
    }
}

#[test]
fn mutated_sessions_cost_only_their_own_connections() {
    let seed = env_u64("VIT_FUZZ_SEED", 0x5eed_0001);
    let secs = env_u64("VIT_FUZZ_SECS", 6);
    let workers = env_u64("VIT_FUZZ_WORKERS", 12);
    // Bounded in count too: at most 1000 connections a second of the run.
    let most = secs * 1000;
    eprintln!("VIT_FUZZ_SEED={seed} VIT_FUZZ_SECS={secs} VIT_FUZZ_WORKERS={workers}");
    let ds = fuzz_datastore();
    let mut cmd = Vitd::command(ds.root(), &[]);
    if let Ok(level) = std::env::var("VIT_FUZZ_LOG") {
        cmd.env("RUST_LOG", level);
    }
    let mut vitd = Vitd::spawn(cmd, ds.port);
    let pid = vitd.child.as_ref().unwrap().id();
    let baseline = settled_resources(pid);
    let rss_start = vm_rss_kib(pid);
    let port = ds.port;
    let mut seeds = seeds(seed);
    seeds.extend(recorded_seeds(port));
    seeds_work(port, &seeds, &vitd);

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let dog = {
        let (stop, last) = (stop.clone(), last.clone());
        std::thread::spawn(move || watchdog(port, stop, last, t0))
    };
    let failures = Arc::new(Mutex::new(Vec::new()));
    let cases = Arc::new(AtomicU64::new(0));
    let seeds = Arc::new(seeds);
    let end = Instant::now() + Duration::from_secs(secs);
    let pool: Vec<_> = (0..workers)
        .map(|w| {
            let (seeds, failures, cases) = (seeds.clone(), failures.clone(), cases.clone());
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(w));
                let mut k = 0;
                while Instant::now() < end && cases.load(Ordering::Relaxed) < most {
                    let case = mutate(&seeds, &mut rng);
                    if let Err(e) = replay(port, &case, &mut rng) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("worker {w} case {k} ({}): {e}", case.name));
                    }
                    cases.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
            })
        })
        .collect();
    // The watchdog's longest wait for a round, and vitd's largest size, while the workers run.
    let (mut worst_gap, mut rss_peak, mut prev) = (0u64, rss_start, 0u64);
    let mut report = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        let rss = vm_rss_kib(pid);
        rss_peak = rss_peak.max(rss);
        if t0.elapsed().as_secs() / 30 > report {
            report = t0.elapsed().as_secs() / 30;
            eprintln!("{} s: vitd VmRSS {rss} KiB", t0.elapsed().as_secs());
        }
        let now = t0.elapsed().as_millis() as u64;
        let l = last.load(Ordering::Relaxed);
        worst_gap = worst_gap.max(now - l.max(prev));
        prev = prev.max(l.min(now));
    }
    for t in pool {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = dog.join().unwrap();
    let log_path = vitd.log.clone();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let n = cases.load(Ordering::Relaxed);
    eprintln!(
        "{n} mutated connections; watchdog {rounds:?}, longest wait {worst_gap} ms; \
         vitd VmRSS {rss_start} KiB at the start, {rss_peak} KiB at the peak"
    );
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "seed {seed}: {failures:#?}\n{}", log());
    let rounds = rounds.unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", log()));
    assert!(
        (rounds > 0 || secs == 0) && worst_gap < 10_000,
        "seed {seed}: the watchdog stalled\n{}",
        log()
    );
    assert!(n > 0 || secs == 0);

    // vitd is still there and answers a new session at once.
    assert!(
        vitd.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "{}",
        log()
    );
    // On `f` an INQUIRY: the fuzzed sessions may have left a persistent reservation there (it
    // outlives the sessions, as it should), which a READ of another nexus would meet.
    let at = Instant::now();
    for (alias, cdb, len) in [
        ("f", &[0x12, 0, 0, 0, 36, 0][..], 36),
        ("w", &rw10(0x28, 0, 8)[..], 4096),
    ] {
        let mut fresh = try_login_with(port, FUZZER, &iqn(alias), [0x80, 0, 0, 3, 0, 1], true)
            .unwrap_or_else(|e| panic!("seed {seed}: login after the fuzz: {e}\n{}", log()));
        // (INQUIRY reports no unit attention, and none conflicts with a reservation.)
        if alias == "w" {
            clear_unit_attention(&mut fresh, 1).unwrap();
        }
        let r = fresh.command(1, cdb, &[], len).unwrap();
        assert_eq!(r.status, 0, "seed {seed}: {alias}: {r:?}");
    }
    assert!(at.elapsed() < Duration::from_secs(5), "{:?}", at.elapsed());
    let text = log();
    assert!(!text.contains("panicked"), "seed {seed}: {text}");
    // Every connection's threads and descriptors given back.
    let back = wait_until(30, || resources(pid) == baseline);
    let rss_end = vm_rss_kib(pid);
    eprintln!(
        "vitd VmRSS {rss_end} KiB at the end; {} log lines",
        text.lines().count()
    );
    assert!(
        back,
        "seed {seed}: threads and descriptors {:?}, {baseline:?} before",
        resources(pid)
    );
    assert!(vitd.stop().success(), "{}", log());
}
