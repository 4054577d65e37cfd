//! Random login conversations: whatever a peer sends during login, the state machine answers
//! with one well-formed Login Response per request, never panics, and never lets a peer that
//! does not know the CHAP secret into a target that requires it.

use super::tests::running;
use super::*;
use crate::iscsi::pdu::TargetPdu;
use proptest::prelude::*;

/// Key=value pairs worth sending: the ones login acts on, with good and bad values.
fn pair() -> impl Strategy<Value = String> {
    let hex = prop::collection::vec(any::<u8>(), 0..40)
        .prop_map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>());
    let num = prop_oneof![Just(0u64), 1u64..70_000, Just(u64::from(u32::MAX) + 1)];
    prop_oneof![
        Just("InitiatorName=iqn.2026-11.io.vit:i".to_string()),
        Just("InitiatorName=".to_string()),
        Just("TargetName=iqn.2026-11.io.vit:t".to_string()),
        Just("TargetName=iqn.2026-11.io.vit:nope".to_string()),
        prop_oneof![Just("Normal"), Just("Discovery"), Just("Other")]
            .prop_map(|v| format!("SessionType={v}")),
        prop_oneof![
            Just("CHAP,None"),
            Just("None"),
            Just("CHAP"),
            Just("KRB5"),
            Just("")
        ]
        .prop_map(|v| format!("AuthMethod={v}")),
        prop_oneof![Just("5"), Just("7"), Just("5,7"), Just("x")]
            .prop_map(|v| format!("CHAP_A={v}")),
        prop_oneof![Just("u"), Just("other"), Just("")].prop_map(|v| format!("CHAP_N={v}")),
        hex.clone().prop_map(|h| format!("CHAP_R=0x{h}")),
        (any::<u8>()).prop_map(|i| format!("CHAP_I={i}")),
        hex.prop_map(|h| format!("CHAP_C=0x{h}")),
        prop_oneof![
            Just("CRC32C,None"),
            Just("None"),
            Just("CRC32C"),
            Just("bogus")
        ]
        .prop_map(|v| format!("HeaderDigest={v}")),
        num.clone()
            .prop_map(|n| format!("MaxRecvDataSegmentLength={n}")),
        num.clone().prop_map(|n| format!("MaxBurstLength={n}")),
        num.clone().prop_map(|n| format!("FirstBurstLength={n}")),
        num.prop_map(|n| format!("MaxConnections={n}")),
        prop_oneof![Just("Yes"), Just("No"), Just("Maybe")]
            .prop_map(|v| format!("ImmediateData={v}")),
        (0u8..4).prop_map(|n| format!("ErrorRecoveryLevel={n}")),
        Just("X-com.example.key=1".to_string()),
        Just("NotAKey=1".to_string()),
        Just("noequals".to_string()),
        Just("=".to_string()),
        (1usize..300).prop_map(|n| format!("TargetAlias={}", "a".repeat(n * 16))),
    ]
}

/// One Login Request: mostly what the conversation so far calls for (so that it reaches CHAP
/// and full feature phase), with extra pairs, and now and then a wrong stage, a continuation, a
/// version or TSIH nobody asked for, or bytes that are not text.
#[derive(Debug, Clone)]
struct Req {
    follow: bool,
    csg: u8,
    nsg: u8,
    transit: bool,
    cont: bool,
    version_min: u8,
    tsih: u16,
    itt: u32,
    cmd_sn: u32,
    /// 0: a normal session, 1: discovery, 2: neither named.
    kind: u8,
    auth: &'static str,
    chap_r: Vec<u8>,
    extra: Vec<String>,
    nul: bool,
    junk: Vec<u8>,
}

fn req() -> impl Strategy<Value = Req> {
    (
        (
            prop::bool::weighted(0.85),
            0u8..4,
            0u8..4,
            prop::bool::weighted(0.8),
        ),
        (
            prop::bool::weighted(0.05),
            prop_oneof![19 => Just(0u8), 1 => 1u8..3],
            prop_oneof![19 => Just(0u16), 1 => any::<u16>()],
            0u32..3,
            0u32..3,
        ),
        (
            prop_oneof![6 => Just(0u8), 3 => Just(1u8), 1 => Just(2u8)],
            prop_oneof![Just("CHAP,None"), Just("None"), Just("CHAP"), Just("KRB5")],
            prop_oneof![
                9 => prop::collection::vec(any::<u8>(), 16),
                1 => prop::collection::vec(any::<u8>(), 0..20),
            ],
        ),
        prop_oneof![
            1 => Just(Vec::new()),
            1 => prop::collection::vec(pair(), 1..3),
        ],
        prop::bool::weighted(0.95),
        prop_oneof![19 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..8)],
    )
        .prop_map(
            |(
                (follow, csg, nsg, transit),
                (cont, version_min, tsih, itt, cmd_sn),
                (kind, auth, chap_r),
                extra,
                nul,
                junk,
            )| Req {
                follow,
                csg,
                nsg,
                transit,
                cont,
                version_min,
                tsih,
                itt,
                cmd_sn,
                kind,
                auth,
                chap_r,
                extra,
                nul,
                junk,
            },
        )
}

impl Req {
    /// The header and text of this request as step `step` of a conversation now in `stage`.
    fn build(&self, stage: u8, step: usize) -> (LoginRequest, Vec<u8>) {
        let (csg, nsg) = if self.follow {
            (
                stage,
                if stage == 0 && self.nsg & 1 == 0 {
                    1
                } else {
                    3
                },
            )
        } else {
            (self.csg, self.nsg)
        };
        let mut pairs: Vec<String> = Vec::new();
        if step == 0 {
            pairs.push("InitiatorName=iqn.2026-11.io.vit:i".into());
            match self.kind {
                0 => pairs.extend([
                    "SessionType=Normal".into(),
                    "TargetName=iqn.2026-11.io.vit:t".into(),
                ]),
                1 => pairs.push("SessionType=Discovery".into()),
                _ => {}
            }
            if csg == 0 {
                pairs.push(format!("AuthMethod={}", self.auth));
            }
        } else if csg == 0 && step == 1 {
            pairs.push("CHAP_A=5".into());
        } else if csg == 0 && step == 2 {
            let hex: String = self.chap_r.iter().map(|x| format!("{x:02x}")).collect();
            pairs.extend(["CHAP_N=u".into(), format!("CHAP_R=0x{hex}")]);
        }
        pairs.extend(self.extra.iter().cloned());
        let mut text = pairs.join("\0").into_bytes();
        if self.nul && !text.is_empty() {
            text.push(0);
        }
        text.extend_from_slice(&self.junk);
        let header = LoginRequest {
            immediate: true,
            transit: self.transit,
            cont: self.cont,
            csg,
            nsg,
            version_min: self.version_min,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: self.tsih,
            itt: self.itt,
            cmd_sn: self.cmd_sn,
            data_segment_length: text.len() as u32,
            ..Default::default()
        };
        (header, text)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_login_conversation_is_answered_and_chap_holds(
        chap in any::<bool>(),
        reqs in prop::collection::vec(req(), 1..12),
    ) {
        let policy = if chap {
            AuthPolicy {
                auth_type: Some(AuthType::Chap),
                chap: vec![("u".into(), "0123456789ab".into())],
                ..Default::default()
            }
        } else {
            AuthPolicy::none()
        };
        let mut l = Login::new(running(policy), 0, "127.0.0.1:5000".parse().unwrap(), 3);
        let mut stage = 0u8;
        for (step, r) in reqs.iter().enumerate() {
            let (header, text) = r.build(stage, step);
            let bytes = l.on_request(&header, &text);
            prop_assert!(bytes.len() >= BHS_LEN);
            let hdr: &[u8; BHS_LEN] = bytes[..BHS_LEN].try_into().unwrap();
            let Ok(TargetPdu::Login(resp)) = TargetPdu::decode(hdr) else {
                return Err(TestCaseError::fail("not a Login Response"));
            };
            let dsl = resp.data_segment_length as usize;
            // The initiator's MaxRecvDataSegmentLength during login is 8192 (RFC 7143 §13.12).
            prop_assert!(dsl <= 8192, "a login response of {} bytes", dsl);
            prop_assert_eq!(bytes.len(), BHS_LEN + dsl + (4 - dsl % 4) % 4);
            prop_assert_eq!(resp.itt, r.itt, "the response answers another task");
            if resp.transit {
                stage = resp.nsg;
            }
            match l.take_outcome() {
                Some(LoginOutcome::Session { target: Some(_), .. }) => {
                    prop_assert!(!chap, "a normal session without the CHAP secret");
                    break;
                }
                Some(LoginOutcome::Session { .. }) => break,
                Some(LoginOutcome::Failed { .. }) => {
                    prop_assert!(resp.status_class != 0, "a failure answered with success");
                    break;
                }
                None => prop_assert_eq!(resp.status_class, 0),
            }
        }
    }
}
