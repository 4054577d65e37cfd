//! A minimal blocking iSCSI initiator: login without authentication, TEST UNIT READY, NOP
//! answers, raw PDUs. It serves tests that need behaviours real initiators never show (silence,
//! session reinstatement, malformed PDUs) and tools that hold many sessions open (the memory
//! figures in `perf/`). Real clients (libiscsi) test everything else.

use super::digest::{DIGEST_LEN, data_digest, header_digest};
use super::pdu::{
    BHS_LEN, LoginRequest, NopOut, ScsiCommand, Stage, TargetPdu, TextRequest, TextResponse,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What a SCSI command returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    pub status: u8,
    pub data_in: Vec<u8>,
    /// Sense data (fixed format) when the status is CHECK CONDITION.
    pub sense: Vec<u8>,
    /// The data segment length of each Data-In PDU, in order.
    pub data_in_segments: Vec<u32>,
}

pub struct Session {
    pub stream: TcpStream,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub itt: u32,
    /// CRC32C header and data digests negotiated.
    pub digests: bool,
}

fn padded(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Reads one target PDU (no digests): header and data segment.
pub fn read_pdu(stream: &mut TcpStream) -> std::io::Result<(TargetPdu, Vec<u8>)> {
    read_pdu_with(stream, false)
}

/// Reads one target PDU, checking CRC32C header and data digests when `digests`.
pub fn read_pdu_with(
    stream: &mut TcpStream,
    digests: bool,
) -> std::io::Result<(TargetPdu, Vec<u8>)> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} digest mismatch"),
        )
    };
    let mut bhs = [0u8; BHS_LEN];
    stream.read_exact(&mut bhs)?;
    if digests {
        let mut d = [0u8; DIGEST_LEN];
        stream.read_exact(&mut d)?;
        if d != header_digest(&bhs, &[]) {
            return Err(bad("header"));
        }
    }
    let len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    let mut data = vec![0u8; padded(len)];
    stream.read_exact(&mut data)?;
    data.truncate(len);
    if digests && len > 0 {
        let mut d = [0u8; DIGEST_LEN];
        stream.read_exact(&mut d)?;
        if d != data_digest(&[&data]) {
            return Err(bad("data"));
        }
    }
    let pdu = TargetPdu::decode(&bhs).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    Ok((pdu, data))
}

fn send(stream: &mut TcpStream, bhs: &[u8; BHS_LEN], data: &[u8]) -> std::io::Result<()> {
    send_with(stream, bhs, data, false)
}

fn send_with(
    stream: &mut TcpStream,
    bhs: &[u8; BHS_LEN],
    data: &[u8],
    digests: bool,
) -> std::io::Result<()> {
    stream.write_all(&frame(bhs, data, digests))
}

/// One PDU as it goes on the wire: header, its digest when `digests`, data, padding, the data's
/// digest when `digests` and there is data.
pub fn frame(bhs: &[u8; BHS_LEN], data: &[u8], digests: bool) -> Vec<u8> {
    let mut wire = bhs.to_vec();
    if digests {
        wire.extend_from_slice(&header_digest(bhs, &[]));
    }
    wire.extend_from_slice(data);
    wire.resize(wire.len() + padded(data.len()) - data.len(), 0);
    if digests && !data.is_empty() {
        wire.extend_from_slice(&data_digest(&[data]));
    }
    wire
}

/// Logs in to `target` on 127.0.0.1:`port` (no authentication), through the security and
/// operational stages to full feature phase. Panics when the target refuses (a test helper).
pub fn login(port: u16, initiator: &str, target: &str, isid: [u8; 6]) -> Session {
    try_login(port, initiator, target, isid).unwrap_or_else(|e| panic!("login: {e}"))
}

/// [`login`], returning errors.
pub fn try_login(
    port: u16,
    initiator: &str,
    target: &str,
    isid: [u8; 6],
) -> std::io::Result<Session> {
    try_login_with(port, initiator, target, isid, false)
}

/// [`try_login`], asking for CRC32C header and data digests when `digests`.
pub fn try_login_with(
    port: u16,
    initiator: &str,
    target: &str,
    isid: [u8; 6],
    digests: bool,
) -> std::io::Result<Session> {
    try_login_from(port, initiator, target, isid, digests, 1)
}

/// [`try_login_with`], numbering commands from `cmd_sn` (the login requests carry it).
pub fn try_login_from(
    port: u16,
    initiator: &str,
    target: &str,
    isid: [u8; 6],
    digests: bool,
    cmd_sn: u32,
) -> std::io::Result<Session> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    login_offering(stream, (initiator, target), isid, digests, cmd_sn, "")
}

/// [`try_login`], offering `extra` operational keys (each `Key=Value\0`) besides the usual ones
/// (a MaxRecvDataSegmentLength in `extra` replaces the usual 65536).
pub fn try_login_offering(
    port: u16,
    initiator: &str,
    target: &str,
    isid: [u8; 6],
    extra: &str,
) -> std::io::Result<Session> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    login_offering(stream, (initiator, target), isid, false, 1, extra)
}

/// [`try_login`] on a connection already made (one whose socket options were set before it
/// connected, say).
pub fn try_login_on(
    stream: TcpStream,
    initiator: &str,
    target: &str,
    isid: [u8; 6],
) -> std::io::Result<Session> {
    login_offering(stream, (initiator, target), isid, false, 1, "")
}

fn login_offering(
    mut stream: TcpStream,
    (initiator, target): (&str, &str),
    isid: [u8; 6],
    digests: bool,
    cmd_sn: u32,
    extra: &str,
) -> std::io::Result<Session> {
    let refused = |what: String| std::io::Error::other(what);
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let digest = if digests { "CRC32C" } else { "None" };
    // 64 KiB unless `extra` declares its own.
    let mrdsl = if extra.contains("MaxRecvDataSegmentLength=") {
        ""
    } else {
        "MaxRecvDataSegmentLength=65536\0"
    };
    let text = format!(
        "InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0AuthMethod=None\0\
         HeaderDigest={digest}\0DataDigest={digest}\0{mrdsl}{extra}"
    );
    let bhs = login_bhs_at(
        (Stage::Security, Stage::Operational),
        isid,
        0,
        text.len(),
        cmd_sn,
    );
    send(&mut stream, &bhs, text.as_bytes())?;
    let (TargetPdu::Login(r), _) = read_pdu(&mut stream)? else {
        return Err(refused("no login response".into()));
    };
    if (r.status_class, r.status_detail) != (0, 0) {
        return Err(refused(format!(
            "login refused: 0x{:02x}{:02x}",
            r.status_class, r.status_detail
        )));
    }
    let bhs = login_bhs_at(
        (Stage::Operational, Stage::FullFeature),
        isid,
        r.stat_sn.wrapping_add(1),
        0,
        cmd_sn,
    );
    send(&mut stream, &bhs, &[])?;
    let (TargetPdu::Login(r), _) = read_pdu(&mut stream)? else {
        return Err(refused("no login response".into()));
    };
    if (r.status_class, r.status_detail) != (0, 0) {
        return Err(refused(format!(
            "login refused: 0x{:02x}{:02x}",
            r.status_class, r.status_detail
        )));
    }
    if !r.transit {
        return Err(refused("login did not reach full feature phase".into()));
    }
    // The digests apply from the first PDU after the final login response.
    Ok(Session {
        stream,
        cmd_sn,
        exp_stat_sn: r.stat_sn.wrapping_add(1),
        itt: 10,
        digests,
    })
}

/// A Login Request header moving from stage `stages.0` to `stages.1` (T bit set), ITT 1,
/// CmdSN 1, for a data segment of `data_len` bytes.
pub fn login_bhs(
    stages: (Stage, Stage),
    isid: [u8; 6],
    exp_stat_sn: u32,
    data_len: usize,
) -> [u8; BHS_LEN] {
    login_bhs_at(stages, isid, exp_stat_sn, data_len, 1)
}

/// [`login_bhs`] with CmdSN `cmd_sn`.
pub fn login_bhs_at(
    stages: (Stage, Stage),
    isid: [u8; 6],
    exp_stat_sn: u32,
    data_len: usize,
    cmd_sn: u32,
) -> [u8; BHS_LEN] {
    let req = LoginRequest {
        immediate: true,
        transit: true,
        csg: stages.0 as u8,
        nsg: stages.1 as u8,
        isid,
        itt: 1,
        cmd_sn,
        exp_stat_sn,
        data_segment_length: data_len as u32,
        ..Default::default()
    };
    let mut bhs = [0u8; BHS_LEN];
    req.encode(&mut bhs);
    bhs
}

/// Logs in to a discovery session on `stream` in one step (security straight to full feature
/// phase, no authentication), with `extra` keys (each `Key=Value\0`) after the required ones;
/// returns the ExpStatSN to use next.
pub fn discovery_login(
    stream: &mut TcpStream,
    initiator: &str,
    extra: &str,
    isid: [u8; 6],
) -> std::io::Result<u32> {
    let text =
        format!("InitiatorName={initiator}\0SessionType=Discovery\0AuthMethod=None\0{extra}");
    let bhs = login_bhs((Stage::Security, Stage::FullFeature), isid, 0, text.len());
    send(stream, &bhs, text.as_bytes())?;
    match read_pdu(stream)? {
        (TargetPdu::Login(r), _) if (r.status_class, r.transit) == (0, true) => {
            Ok(r.stat_sn.wrapping_add(1))
        }
        (other, _) => Err(std::io::Error::other(format!(
            "discovery login refused: {other:?}"
        ))),
    }
}

impl Session {
    /// Sends TEST UNIT READY and returns the target's answer (skipping NOP-In pings).
    pub fn test_unit_ready(&mut self) -> std::io::Result<TargetPdu> {
        self.itt += 1;
        let cmd = ScsiCommand {
            final_bit: true,
            attr: 1,
            itt: self.itt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ..Default::default()
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let mut bhs = [0u8; BHS_LEN];
        cmd.encode(&mut bhs);
        send_with(&mut self.stream, &bhs, &[], self.digests)?;
        loop {
            let (pdu, _) = read_pdu_with(&mut self.stream, self.digests)?;
            if !matches!(pdu, TargetPdu::NopIn(_)) {
                return Ok(pdu);
            }
        }
    }

    /// Sends a SCSI command (to LUN 0..255) with its data-out as immediate data (keep it within
    /// the negotiated FirstBurstLength: vitd's 64 KiB, less if the login offered less) and
    /// collects the answer; an R2T is an error: (status, data-in, sense). Skips NOP-In pings.
    pub fn command(
        &mut self,
        lun: u8,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> std::io::Result<CommandResult> {
        self.itt += 1;
        let mut c = [0u8; 16];
        c[..cdb.len().min(16)].copy_from_slice(&cdb[..cdb.len().min(16)]);
        let cmd = ScsiCommand {
            final_bit: true,
            read: read_len > 0,
            write: !data_out.is_empty(),
            attr: 1,
            lun: u64::from(lun) << 48,
            itt: self.itt,
            expected_data_length: if data_out.is_empty() {
                read_len
            } else {
                data_out.len() as u32
            },
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: c,
            data_segment_length: data_out.len() as u32,
            ..Default::default()
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let mut bhs = [0u8; BHS_LEN];
        cmd.encode(&mut bhs);
        send_with(&mut self.stream, &bhs, data_out, self.digests)?;
        let mut data_in = Vec::new();
        let mut data_in_segments = Vec::new();
        loop {
            let (pdu, data) = read_pdu_with(&mut self.stream, self.digests)?;
            match pdu {
                TargetPdu::NopIn(_) => {}
                TargetPdu::DataIn(d) => {
                    data_in.extend_from_slice(&data);
                    data_in_segments.push(d.data_segment_length);
                    if d.status_present {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        return Ok(CommandResult {
                            status: d.status,
                            data_in,
                            sense: Vec::new(),
                            data_in_segments,
                        });
                    }
                }
                TargetPdu::ScsiResponse(r) => {
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    let sense = data.get(2..).unwrap_or(&[]).to_vec();
                    return Ok(CommandResult {
                        status: r.status,
                        data_in,
                        sense,
                        data_in_segments,
                    });
                }
                other => return Err(std::io::Error::other(format!("unexpected {other:?}"))),
            }
        }
    }

    /// Sends a one-PDU Text Request carrying `text` (each `Key=Value\0`) and returns the target's
    /// Text Response with its data (skipping NOP-In pings).
    pub fn text(&mut self, text: &[u8]) -> std::io::Result<(TextResponse, Vec<u8>)> {
        self.itt += 1;
        let req = TextRequest {
            final_bit: true,
            itt: self.itt,
            ttt: 0xffff_ffff,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data_segment_length: text.len() as u32,
            ..Default::default()
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let mut bhs = [0u8; BHS_LEN];
        req.encode(&mut bhs);
        send_with(&mut self.stream, &bhs, text, self.digests)?;
        loop {
            match read_pdu_with(&mut self.stream, self.digests)? {
                (TargetPdu::NopIn(_), _) => {}
                (TargetPdu::Text(r), data) => {
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    return Ok((r, data));
                }
                (other, _) => return Err(std::io::Error::other(format!("unexpected {other:?}"))),
            }
        }
    }

    /// Answers a NOP-In ping.
    pub fn answer_ping(&mut self, ttt: u32) -> std::io::Result<()> {
        let nop = NopOut {
            immediate: true,
            itt: 0xffff_ffff,
            ttt,
            cmd_sn: self.cmd_sn,
            ..Default::default()
        };
        let mut bhs = [0u8; BHS_LEN];
        nop.encode(&mut bhs);
        send_with(&mut self.stream, &bhs, &[], self.digests)
    }

    /// Sends raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Waits until the target closes the connection; `Err` if it is still open after `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> Result<Vec<TargetPdu>, String> {
        self.stream
            .set_read_timeout(Some(limit))
            .map_err(|e| e.to_string())?;
        let mut seen = Vec::new();
        loop {
            match read_pdu_with(&mut self.stream, self.digests) {
                Ok((pdu, _)) => seen.push(pdu),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Err(format!("still open after {limit:?}; saw {seen:?}"));
                }
                Err(_) => return Ok(seen),
            }
        }
    }
}
