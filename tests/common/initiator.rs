//! A minimal iSCSI initiator for the behaviours libiscsi's tools cannot trigger (silence, session
//! reinstatement, PDUs no correct initiator sends). It uses the crate's own codec; the real
//! clients cover everything else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use vit::iscsi::pdu::{BHS_LEN, LoginRequest, NopOut, ScsiCommand, Stage, TargetPdu};

pub struct Session {
    pub stream: TcpStream,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub itt: u32,
}

fn padded(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Reads one target PDU (no digests): header and data segment.
pub fn read_pdu(stream: &mut TcpStream) -> std::io::Result<(TargetPdu, Vec<u8>)> {
    let mut bhs = [0u8; BHS_LEN];
    stream.read_exact(&mut bhs)?;
    let len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    let mut data = vec![0u8; padded(len)];
    stream.read_exact(&mut data)?;
    data.truncate(len);
    let pdu = TargetPdu::decode(&bhs).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    Ok((pdu, data))
}

fn send(stream: &mut TcpStream, bhs: &[u8; BHS_LEN], data: &[u8]) -> std::io::Result<()> {
    let mut wire = bhs.to_vec();
    wire.extend_from_slice(data);
    wire.resize(BHS_LEN + padded(data.len()), 0);
    stream.write_all(&wire)
}

/// Logs in to `target` (no authentication) in one request: security to full feature phase.
pub fn login(port: u16, initiator: &str, target: &str, isid: [u8; 6]) -> Session {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let text = format!(
        "InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0AuthMethod=None\0\
         HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=65536\0"
    );
    // Security stage with transit straight to full feature phase is not allowed: go through the
    // operational stage as initiators do.
    let mut req = LoginRequest {
        immediate: true,
        transit: true,
        csg: Stage::Security as u8,
        nsg: Stage::Operational as u8,
        isid,
        itt: 1,
        cmd_sn: 1,
        data_segment_length: text.len() as u32,
        ..Default::default()
    };
    let mut bhs = [0u8; BHS_LEN];
    req.encode(&mut bhs);
    send(&mut stream, &bhs, text.as_bytes()).unwrap();
    let (TargetPdu::Login(r), _) = read_pdu(&mut stream).unwrap() else {
        panic!("no login response")
    };
    assert_eq!((r.status_class, r.status_detail), (0, 0), "login refused");
    req.csg = Stage::Operational as u8;
    req.nsg = Stage::FullFeature as u8;
    req.data_segment_length = 0;
    req.exp_stat_sn = r.stat_sn.wrapping_add(1);
    req.encode(&mut bhs);
    send(&mut stream, &bhs, &[]).unwrap();
    let (TargetPdu::Login(r), _) = read_pdu(&mut stream).unwrap() else {
        panic!("no login response")
    };
    assert_eq!(
        (r.status_class, r.transit),
        (0, true),
        "login did not reach full feature phase"
    );
    Session {
        stream,
        cmd_sn: 1,
        exp_stat_sn: r.stat_sn.wrapping_add(1),
        itt: 10,
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
        self.cmd_sn += 1;
        let mut bhs = [0u8; BHS_LEN];
        cmd.encode(&mut bhs);
        send(&mut self.stream, &bhs, &[])?;
        loop {
            let (pdu, _) = read_pdu(&mut self.stream)?;
            if !matches!(pdu, TargetPdu::NopIn(_)) {
                return Ok(pdu);
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
        send(&mut self.stream, &bhs, &[])
    }

    /// Sends raw bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Waits until the target closes the connection; `Err` if it is still open after `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> Result<Vec<TargetPdu>, String> {
        self.stream.set_read_timeout(Some(limit)).unwrap();
        let mut seen = Vec::new();
        loop {
            match read_pdu(&mut self.stream) {
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
