//! A whole login, driven through the public codec API as the target daemon would: wire bytes
//! into the reader, BHS decode, C-bit text joining, key negotiation, CHAP, login responses
//! and text chunks out.

use vit::iscsi::chap::{ChapAuthenticator, ChapSecrets, ChapStep, Hex, chap_response};
use vit::iscsi::digest::DataTrailer;
use vit::iscsi::params::{Accept, AuthMethod, Negotiator, SessionType, TargetLimits};
use vit::iscsi::pdu::{
    BHS_LEN, InitiatorPdu, LoginRequest, LoginResponse, LoginStatus, Stage, TargetPdu,
};
use vit::iscsi::reader::{Event, PduReader, ReaderLimits};
use vit::iscsi::text::{OutgoingText, TextAccumulator, TextList};

const SECRET: &[u8] = b"0123456789abcdef";

/// The initiator side: one Login Request on the wire.
fn login_pdu(csg: Stage, nsg: Stage, transit: bool, cont: bool, text: &[u8]) -> Vec<u8> {
    let req = LoginRequest {
        immediate: true,
        transit,
        cont,
        csg: csg as u8,
        nsg: nsg as u8,
        isid: [0x80, 0, 0, 1, 2, 3],
        itt: 1,
        data_segment_length: text.len() as u32,
        ..LoginRequest::default()
    };
    let mut bhs = [0u8; BHS_LEN];
    req.encode(&mut bhs);
    let mut wire = bhs.to_vec();
    wire.extend_from_slice(text);
    wire.extend_from_slice(DataTrailer::new(&[text], false).as_bytes());
    wire
}

/// The target side: reads one PDU from `wire`, returns its header and data segment.
fn read_pdu(reader: &mut PduReader, wire: &[u8]) -> (LoginRequest, Vec<u8>) {
    let mut data = Vec::new();
    let mut off = 0;
    // Deliver the bytes 7 at a time, as short receives would.
    loop {
        let end = (off + 7).min(wire.len());
        let fed = reader.feed(&wire[off..end]);
        if let Some(range) = fed.data {
            data.extend_from_slice(&wire[off..end][range]);
        }
        off += fed.consumed;
        if fed.result.expect("read") == Some(Event::Complete) {
            break;
        }
    }
    assert_eq!(off, wire.len());
    match InitiatorPdu::decode(reader.bhs()).expect("known opcode") {
        InitiatorPdu::Login(login) => (login, data),
        other => panic!("unexpected {other:?}"),
    }
}

fn pairs(out: &OutgoingText) -> String {
    String::from_utf8(out.as_bytes().to_vec())
        .unwrap()
        .replace('\0', ";")
}

#[test]
fn chap_login_to_full_feature_phase() {
    let ours = TargetLimits {
        auth: Accept {
            none: false,
            other: true,
        },
        max_recv_data_segment_length: 65536,
        initial_r2t: false,
        ..TargetLimits::default()
    };
    let mut reader = PduReader::new(ReaderLimits::login());
    let mut negotiator = Negotiator::new_leading(ours).unwrap();
    let mut chap = ChapAuthenticator::new();
    let mut joined = TextAccumulator::new(64 * 1024);
    let lookup = |user: &str| {
        (user == "alice").then_some(ChapSecrets {
            secret: SECRET,
            mutual: None,
        })
    };

    // 1. Security stage, split over two PDUs with the C bit.
    let first = b"InitiatorName=iqn.2026-01.org.example:host\0TargetName=iqn.2026-01.com.exam";
    let rest = b"ple:t1\0SessionType=Normal\0AuthMethod=CHAP,None\0";
    let (req, data) = read_pdu(
        &mut reader,
        &login_pdu(Stage::Security, Stage::Security, false, true, first),
    );
    assert!(req.cont && req.immediate);
    assert_eq!(joined.append(&data, req.cont).unwrap(), None);
    let (req, data) = read_pdu(
        &mut reader,
        &login_pdu(Stage::Security, Stage::Security, false, false, rest),
    );
    let text = joined.append(&data, req.cont).unwrap().unwrap().to_vec();
    let keys = TextList::parse(&text).unwrap();
    let mut out = OutgoingText::new(8192);
    negotiator
        .negotiate(Stage::Security, &keys, &mut out)
        .unwrap();
    assert_eq!(pairs(&out), "AuthMethod=CHAP;TargetPortalGroupTag=1;");
    assert_eq!(negotiator.auth_method(), AuthMethod::Chap);

    // 2. CHAP_A: the target answers with its challenge.
    let (req, data) = read_pdu(
        &mut reader,
        &login_pdu(
            Stage::Security,
            Stage::Security,
            false,
            false,
            b"CHAP_A=7,5\0",
        ),
    );
    let text = joined.append(&data, req.cont).unwrap().unwrap().to_vec();
    let keys = TextList::parse(&text).unwrap();
    let mut out = OutgoingText::new(8192);
    negotiator
        .negotiate(Stage::Security, &keys, &mut out)
        .unwrap();
    assert_eq!(
        chap.step(&keys, lookup, &mut out).unwrap(),
        ChapStep::ChallengeSent
    );
    let challenge_text = out.as_bytes().to_vec();
    let challenge = TextList::parse(&challenge_text).unwrap();
    assert_eq!(challenge.get("CHAP_A"), Some("5"));
    let id: u8 = challenge.get("CHAP_I").unwrap().parse().unwrap();
    let c = challenge.get("CHAP_C").unwrap();
    assert_eq!(c.len(), 2 + 64);
    let c_bytes: Vec<u8> = (2..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&c[i..i + 2], 16).unwrap())
        .collect();

    // 3. The initiator's response; transit to the operational stage.
    let response = format!(
        "CHAP_N=alice\0CHAP_R={}\0",
        Hex(&chap_response(id, SECRET, &c_bytes))
    );
    let (req, data) = read_pdu(
        &mut reader,
        &login_pdu(
            Stage::Security,
            Stage::Operational,
            true,
            false,
            response.as_bytes(),
        ),
    );
    assert!(req.transit);
    let text = joined.append(&data, req.cont).unwrap().unwrap().to_vec();
    let keys = TextList::parse(&text).unwrap();
    let mut out = OutgoingText::new(8192);
    negotiator
        .negotiate(Stage::Security, &keys, &mut out)
        .unwrap();
    assert_eq!(
        chap.step(&keys, lookup, &mut out).unwrap(),
        ChapStep::Authenticated {
            user: "alice".into()
        }
    );

    // 4. Operational stage and transit to full feature phase.
    let op = b"HeaderDigest=CRC32C,None\0DataDigest=None\0MaxRecvDataSegmentLength=16384\0\
MaxBurstLength=131072\0FirstBurstLength=32768\0ImmediateData=Yes\0InitialR2T=No\0";
    let (req, data) = read_pdu(
        &mut reader,
        &login_pdu(Stage::Operational, Stage::FullFeature, true, false, op),
    );
    let text = joined.append(&data, req.cont).unwrap().unwrap().to_vec();
    let keys = TextList::parse(&text).unwrap();
    let mut out = OutgoingText::new(8192);
    negotiator
        .negotiate(Stage::Operational, &keys, &mut out)
        .unwrap();
    assert_eq!(
        pairs(&out),
        "HeaderDigest=CRC32C;DataDigest=None;MaxBurstLength=131072;FirstBurstLength=32768;\
ImmediateData=Yes;InitialR2T=No;MaxRecvDataSegmentLength=65536;"
    );
    let params = negotiator.finish().unwrap();
    assert_eq!(params.session_type, SessionType::Normal);
    assert_eq!(params.initiator_name, "iqn.2026-01.org.example:host");
    assert_eq!(
        params.target_name.as_deref(),
        Some("iqn.2026-01.com.example:t1")
    );
    assert_eq!(params.initiator_max_recv_data_segment_length, 16384);
    assert!(params.header_digest && !params.data_digest && !params.initial_r2t);

    // The final Login Response, with the response text in chunks of the initiator's limit.
    let mut rsp = LoginResponse {
        transit: true,
        csg: Stage::Operational as u8,
        nsg: Stage::FullFeature as u8,
        isid: req.isid,
        tsih: 1,
        itt: req.itt,
        ..LoginResponse::default()
    };
    rsp.set_status(LoginStatus::Success);
    let chunk = out
        .next_chunk(params.initiator_max_recv_data_segment_length)
        .unwrap();
    assert!(!chunk.cont);
    rsp.data_segment_length = chunk.bytes.len() as u32;
    let mut bhs = [0u8; BHS_LEN];
    rsp.encode(&mut bhs);
    let TargetPdu::Login(back) = TargetPdu::decode(&bhs).unwrap() else {
        panic!("not a login response");
    };
    assert_eq!(
        (back.status_class, back.status_detail, back.tsih),
        (0, 0, 1)
    );

    // From now on the reader expects header digests and the declared segment limit.
    reader.set_limits(params.reader_limits());
    assert!(reader.limits().header_digest);
    assert_eq!(reader.limits().max_recv_data_segment_length, 65536);
}

#[test]
fn wrong_chap_response_fails_with_authentication_failure() {
    let mut chap = ChapAuthenticator::new();
    let lookup = |user: &str| {
        (user == "alice").then_some(ChapSecrets {
            secret: SECRET,
            mutual: None,
        })
    };
    let mut out = OutgoingText::new(1024);
    chap.step(&TextList::parse(b"CHAP_A=5\0").unwrap(), lookup, &mut out)
        .unwrap();
    let keys =
        TextList::parse(b"CHAP_N=alice\0CHAP_R=0x00000000000000000000000000000000\0").unwrap();
    let err = chap.step(&keys, lookup, &mut out).unwrap_err();
    assert_eq!(err.login_status(), LoginStatus::AuthenticationFailure);
    assert!(err.to_string().contains("alice"));
}
