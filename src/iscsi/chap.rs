//! CHAP authentication with MD5 (RFC 1994, RFC 7143 section 12.1.3), target side.
//!
//! The exchange, after `AuthMethod=CHAP` was agreed:
//! 1. initiator `CHAP_A=<list>`; we answer `CHAP_A=5`, `CHAP_I=<id>`, `CHAP_C=<challenge>`;
//! 2. initiator `CHAP_N=<user>`, `CHAP_R=<response>` and, for mutual CHAP, `CHAP_I`, `CHAP_C`;
//!    we check `response == MD5(id || secret || challenge)` in constant time and, for mutual
//!    CHAP, answer `CHAP_N=<our user>`, `CHAP_R=<our response>`.
//!
//! [`ChapAuthenticator`] runs that state machine; outcomes are typed ([`ChapFailure`]) so the
//! login code can pick the login status and log the reason.

use std::fmt;

use md5::{Digest, Md5};
use rand::TryRngCore;
use rand::rngs::OsRng;
use thiserror::Error;

use super::params::parse_number;
use super::pdu::LoginStatus;
use super::text::{TextError, TextList, TextSink};

/// The only CHAP algorithm we run: MD5 (CHAP_A=5).
pub const CHAP_MD5: u32 = 5;
/// Length of an MD5 CHAP response.
pub const RESPONSE_LEN: usize = 16;
/// Length of the challenges we generate.
pub const CHALLENGE_LEN: usize = 32;
/// Largest decoded binary value accepted (CHAP_C, CHAP_R).
pub const MAX_BINARY_LEN: usize = 1024;
/// Longest CHAP_N accepted.
pub const MAX_NAME_LEN: usize = 255;

/// Why an authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChapFailure {
    /// The initiator offered no algorithm we run (we only run MD5, 5).
    #[error("CHAP_A offers no supported algorithm (need 5)")]
    NoSupportedAlgorithm,
    /// CHAP_N names no user we know.
    #[error("CHAP_N {0:?}: unknown user")]
    BadUser(String),
    /// CHAP_R does not match the expected response.
    #[error("CHAP_R: wrong response for user {0:?}")]
    BadResponse(String),
    /// The initiator sent our own challenge back (a reflection attack).
    #[error("CHAP_C: the initiator's challenge equals ours (reflection)")]
    Reflected,
    /// The initiator asked for mutual CHAP but none is configured, or the reverse.
    #[error("mutual CHAP {0}")]
    MutualMismatch(&'static str),
    /// A key is missing or malformed.
    #[error("CHAP key {key}: {reason}")]
    Malformed {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The OS random source failed.
    #[error("random source failed")]
    Random,
    /// Our response did not fit the response buffer.
    #[error("response text: {0}")]
    Response(#[from] TextError),
    /// A step came after the exchange ended.
    #[error("CHAP exchange already finished")]
    Finished,
}

impl ChapFailure {
    /// The login status to answer with.
    pub fn login_status(&self) -> LoginStatus {
        match self {
            Self::Random | Self::Response(_) => LoginStatus::TargetError,
            // A CHAP key the step needs is absent: "missing parameter", as ctld answers.
            Self::Malformed {
                reason: MISSING, ..
            } => LoginStatus::MissingParameter,
            Self::Malformed { .. } | Self::Finished => LoginStatus::InitiatorError,
            _ => LoginStatus::AuthenticationFailure,
        }
    }
}

/// The reason of a [`ChapFailure::Malformed`] whose key is absent.
const MISSING: &str = "missing";

fn malformed(key: &'static str, reason: &'static str) -> ChapFailure {
    ChapFailure::Malformed { key, reason }
}

/// Whether the CHAP_A list offers MD5.
pub fn offers_md5(chap_a: &str) -> bool {
    chap_a.split(',').any(|a| parse_number(a) == Some(CHAP_MD5))
}

/// MD5(id || secret || challenge), the CHAP response (RFC 1994 4.1).
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; RESPONSE_LEN] {
    let mut md5 = Md5::new();
    md5.update([id]);
    md5.update(secret);
    md5.update(challenge);
    md5.finalize().into()
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Decodes a binary value: `0x`/`0X` hex (odd digit counts get a leading zero) or `0b`/`0B`
/// base64 (RFC 7143 6.1), into `buf`. At most [`MAX_BINARY_LEN`] bytes.
pub fn decode_binary<'b>(
    key: &'static str,
    value: &str,
    buf: &'b mut [u8; MAX_BINARY_LEN],
) -> Result<&'b [u8], ChapFailure> {
    let (prefix, body) = value
        .split_at_checked(2)
        .ok_or(malformed(key, "too short"))?;
    let len = match prefix {
        "0x" | "0X" => decode_hex(key, body.as_bytes(), buf)?,
        "0b" | "0B" => decode_base64(key, body.as_bytes(), buf)?,
        _ => return Err(malformed(key, "not 0x hex or 0b base64")),
    };
    if len == 0 {
        return Err(malformed(key, "empty"));
    }
    Ok(buf.get(..len).unwrap_or(&[]))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_hex(key: &'static str, digits: &[u8], out: &mut [u8]) -> Result<usize, ChapFailure> {
    let len = digits.len().div_ceil(2);
    if len > out.len() {
        return Err(malformed(key, "longer than 1024 bytes"));
    }
    // With an odd count, the first byte holds one digit.
    let (first, rest) = digits.split_at(digits.len() % 2);
    let pairs = first
        .iter()
        .map(|d| (b'0', *d))
        .chain(rest.chunks_exact(2).map(|p| (p[0], p[1])));
    for (slot, (hi, lo)) in out.iter_mut().zip(pairs) {
        let (Some(hi), Some(lo)) = (hex_digit(hi), hex_digit(lo)) else {
            return Err(malformed(key, "bad hex digit"));
        };
        *slot = (hi << 4) | lo;
    }
    Ok(len)
}

fn base64_digit(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

fn decode_base64(key: &'static str, text: &[u8], out: &mut [u8]) -> Result<usize, ChapFailure> {
    let body_len = text.iter().rposition(|c| *c != b'=').map_or(0, |i| i + 1);
    let (body, pad) = text.split_at(body_len);
    if pad.len() > 2 || (!pad.is_empty() && !text.len().is_multiple_of(4)) || body_len % 4 == 1 {
        return Err(malformed(key, "bad base64 length or padding"));
    }
    let len = body_len / 4 * 3 + (body_len % 4).saturating_sub(1);
    if len > out.len() {
        return Err(malformed(key, "longer than 1024 bytes"));
    }
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut n = 0usize;
    for c in body {
        let d = base64_digit(*c).ok_or(malformed(key, "bad base64 character"))?;
        acc = ((acc << 6) | u32::from(d)) & 0xff_ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if let Some(slot) = out.get_mut(n) {
                *slot = (acc >> bits) as u8;
            }
            n += 1;
        }
    }
    Ok(n.min(len))
}

/// Formats bytes as `0x` followed by lowercase hex.
#[derive(Clone, Copy)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The secrets configured for one CHAP user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChapSecrets<'a> {
    /// The initiator's secret.
    pub secret: &'a [u8],
    /// For mutual CHAP: the name and secret the target answers with.
    pub mutual: Option<(&'a str, &'a [u8])>,
}

/// A challenge we sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// CHAP_I.
    pub id: u8,
    /// CHAP_C.
    pub bytes: [u8; CHALLENGE_LEN],
}

impl Challenge {
    /// A fresh identifier and challenge from the OS random source.
    pub fn generate() -> Result<Self, ChapFailure> {
        let mut raw = [0u8; CHALLENGE_LEN + 1];
        OsRng
            .try_fill_bytes(&mut raw)
            .map_err(|_| ChapFailure::Random)?;
        let mut bytes = [0u8; CHALLENGE_LEN];
        bytes.copy_from_slice(&raw[1..]);
        Ok(Self { id: raw[0], bytes })
    }
}

/// What a successful exchange showed: the user, the challenge we sent and the initiator's
/// response to it. ctld's `discovery-filter portal-name-auth` checks a discovery session's
/// response against each CHAP target's secret for that user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapProof {
    /// The CHAP_N the initiator authenticated as.
    pub user: String,
    /// Our CHAP_I.
    pub id: u8,
    /// Our CHAP_C.
    pub challenge: [u8; CHALLENGE_LEN],
    /// The initiator's CHAP_R.
    pub response: [u8; RESPONSE_LEN],
}

impl ChapProof {
    /// Whether the initiator's response is the one `secret` gives (compared in constant time).
    pub fn verifies(&self, secret: &[u8]) -> bool {
        constant_time_eq(
            &chap_response(self.id, secret, &self.challenge),
            &self.response,
        )
    }
}

/// Progress of a CHAP exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChapStep {
    /// We sent our challenge; the initiator's response comes in the next login request.
    ChallengeSent,
    /// The initiator (and, for mutual CHAP, the target) is authenticated.
    Authenticated {
        /// The CHAP_N the initiator authenticated as.
        user: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitAlgorithm,
    AwaitResponse(Challenge),
    Done,
}

/// The target side of one CHAP exchange.
#[derive(Debug, Clone)]
pub struct ChapAuthenticator {
    state: State,
    proof: Option<ChapProof>,
}

impl Default for ChapAuthenticator {
    fn default() -> Self {
        Self::new()
    }
}

impl ChapAuthenticator {
    /// An exchange waiting for CHAP_A.
    pub fn new() -> Self {
        Self {
            state: State::AwaitAlgorithm,
            proof: None,
        }
    }

    /// The user, challenge and response of the exchange, once it succeeded.
    pub fn proof(&self) -> Option<&ChapProof> {
        self.proof.as_ref()
    }

    /// Handles one security-stage login request. `lookup` maps a CHAP_N to its secrets.
    pub fn step<'s>(
        &mut self,
        keys: &TextList<'_>,
        lookup: impl FnOnce(&str) -> Option<ChapSecrets<'s>>,
        out: &mut dyn TextSink,
    ) -> Result<ChapStep, ChapFailure> {
        match self.state {
            State::AwaitAlgorithm => {
                let challenge = Challenge::generate()?;
                self.send_challenge(keys, challenge, out)
            }
            State::AwaitResponse(challenge) => {
                self.state = State::Done;
                let (step, proof) = verify_response(keys, &challenge, lookup, out)?;
                self.proof = Some(proof);
                Ok(step)
            }
            State::Done => Err(ChapFailure::Finished),
        }
    }

    /// The first step with a given challenge (tests use fixed challenges).
    pub fn send_challenge(
        &mut self,
        keys: &TextList<'_>,
        challenge: Challenge,
        out: &mut dyn TextSink,
    ) -> Result<ChapStep, ChapFailure> {
        if self.state != State::AwaitAlgorithm {
            return Err(ChapFailure::Finished);
        }
        let algorithms = keys.get("CHAP_A").ok_or(malformed("CHAP_A", MISSING))?;
        if !offers_md5(algorithms) {
            self.state = State::Done;
            out.push("CHAP_A", "Reject")?;
            return Err(ChapFailure::NoSupportedAlgorithm);
        }
        out.push_fmt("CHAP_A", format_args!("{CHAP_MD5}"))?;
        out.push_fmt("CHAP_I", format_args!("{}", challenge.id))?;
        out.push_fmt("CHAP_C", format_args!("{}", Hex(&challenge.bytes)))?;
        self.state = State::AwaitResponse(challenge);
        Ok(ChapStep::ChallengeSent)
    }
}

/// Checks CHAP_N/CHAP_R against our challenge and answers a mutual challenge.
fn verify_response<'s>(
    keys: &TextList<'_>,
    challenge: &Challenge,
    lookup: impl FnOnce(&str) -> Option<ChapSecrets<'s>>,
    out: &mut dyn TextSink,
) -> Result<(ChapStep, ChapProof), ChapFailure> {
    let user = keys.get("CHAP_N").ok_or(malformed("CHAP_N", MISSING))?;
    if user.is_empty() || user.len() > MAX_NAME_LEN {
        return Err(malformed("CHAP_N", "empty or longer than 255 bytes"));
    }
    let mut buf = [0u8; MAX_BINARY_LEN];
    let response = keys.get("CHAP_R").ok_or(malformed("CHAP_R", MISSING))?;
    let response = decode_binary("CHAP_R", response, &mut buf)?;
    if response.len() != RESPONSE_LEN {
        return Err(malformed("CHAP_R", "not 16 bytes"));
    }
    let secrets = lookup(user);
    // Unknown users cost the same MD5 as known ones.
    let secret = secrets.map_or(&[][..], |s| s.secret);
    let expected = chap_response(challenge.id, secret, &challenge.bytes);
    let matches = constant_time_eq(&expected, response);
    let Some(secrets) = secrets else {
        return Err(ChapFailure::BadUser(user.to_owned()));
    };
    if !matches {
        return Err(ChapFailure::BadResponse(user.to_owned()));
    }
    let mutual_id = keys.get("CHAP_I");
    let mutual_challenge = keys.get("CHAP_C");
    match (mutual_id, mutual_challenge, secrets.mutual) {
        (None, None, None) => {}
        (Some(id), Some(their_challenge), Some((name, our_secret))) => {
            let id = parse_number(id)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or(malformed("CHAP_I", "not a number 0..255"))?;
            let mut cbuf = [0u8; MAX_BINARY_LEN];
            let their_challenge = decode_binary("CHAP_C", their_challenge, &mut cbuf)?;
            if constant_time_eq(their_challenge, &challenge.bytes) {
                return Err(ChapFailure::Reflected);
            }
            let ours = chap_response(id, our_secret, their_challenge);
            out.push("CHAP_N", name)?;
            out.push_fmt("CHAP_R", format_args!("{}", Hex(&ours)))?;
        }
        // Mutual CHAP takes both.
        (Some(_), None, _) => return Err(malformed("CHAP_C", MISSING)),
        (None, Some(_), _) => return Err(malformed("CHAP_I", MISSING)),
        (Some(_), Some(_), None) => return Err(ChapFailure::MutualMismatch("not configured")),
        (None, None, Some(_)) => return Err(ChapFailure::MutualMismatch("required")),
    }
    let mut received = [0u8; RESPONSE_LEN];
    received.copy_from_slice(response);
    let proof = ChapProof {
        user: user.to_owned(),
        id: challenge.id,
        challenge: challenge.bytes,
        response: received,
    };
    Ok((
        ChapStep::Authenticated {
            user: user.to_owned(),
        },
        proof,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::text::TextWriter;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"initiatorsecret1";
    const TARGET_SECRET: &[u8] = b"targetsecret1234";

    fn secrets(user: &str) -> Option<ChapSecrets<'static>> {
        (user == "alice").then_some(ChapSecrets {
            secret: SECRET,
            mutual: None,
        })
    }

    fn mutual(user: &str) -> Option<ChapSecrets<'static>> {
        (user == "alice").then_some(ChapSecrets {
            secret: SECRET,
            mutual: Some(("iqn.2026-01.com.example:t1", TARGET_SECRET)),
        })
    }

    fn text(out: &TextWriter<'_>) -> String {
        String::from_utf8(out.as_bytes().to_vec())
            .unwrap()
            .replace('\0', ";")
    }

    fn fixed() -> Challenge {
        let mut bytes = [0u8; CHALLENGE_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        Challenge { id: 7, bytes }
    }

    #[test]
    fn md5_vectors() {
        // RFC 1321 test vector: MD5("abc").
        let digest: [u8; 16] = Md5::digest(b"abc").into();
        assert_eq!(
            format!("{}", Hex(&digest)),
            "0x900150983cd24fb0d6963f7d28e17f72"
        );
        // Hand-computed: MD5(0x01 || "secret" || 0x00 0x01 0x02 0x03) split the same way.
        let mut input = vec![1u8];
        input.extend_from_slice(b"secret");
        input.extend_from_slice(&[0, 1, 2, 3]);
        let expected: [u8; 16] = Md5::digest(&input).into();
        assert_eq!(chap_response(1, b"secret", &[0, 1, 2, 3]), expected);
        // CHAP id 0, empty secret, empty challenge is MD5 of a single zero byte.
        assert_eq!(
            format!("{}", Hex(&chap_response(0, b"", b""))),
            "0x93b885adfe0da089cdf634904fd59f71"
        );
    }

    #[test]
    fn binary_decoding() {
        let mut buf = [0u8; MAX_BINARY_LEN];
        assert_eq!(
            decode_binary("K", "0x0aFf", &mut buf).unwrap(),
            &[0x0a, 0xff]
        );
        assert_eq!(
            decode_binary("K", "0xabc", &mut buf).unwrap(),
            &[0x0a, 0xbc]
        );
        assert_eq!(decode_binary("K", "0bAQID", &mut buf).unwrap(), &[1, 2, 3]);
        assert_eq!(decode_binary("K", "0bAQI=", &mut buf).unwrap(), &[1, 2]);
        assert_eq!(decode_binary("K", "0bAQ==", &mut buf).unwrap(), &[1]);
        assert_eq!(decode_binary("K", "0bAQ", &mut buf).unwrap(), &[1]);
        assert!(decode_binary("K", "0x", &mut buf).is_err());
        assert!(decode_binary("K", "0xzz", &mut buf).is_err());
        assert!(decode_binary("K", "1234", &mut buf).is_err());
        assert!(decode_binary("K", "0bA", &mut buf).is_err());
        assert!(decode_binary("K", "0bA===", &mut buf).is_err());
        assert!(decode_binary("K", "0bAQ=", &mut buf).is_err());
        assert!(decode_binary("K", "0b!!!!", &mut buf).is_err());
        let long = format!("0x{}", "00".repeat(MAX_BINARY_LEN + 1));
        assert!(matches!(
            decode_binary("CHAP_C", &long, &mut buf),
            Err(ChapFailure::Malformed { key: "CHAP_C", .. })
        ));
        let max = format!("0x{}", "ab".repeat(MAX_BINARY_LEN));
        assert_eq!(
            decode_binary("K", &max, &mut buf).unwrap().len(),
            MAX_BINARY_LEN
        );
    }

    #[test]
    fn algorithm_selection() {
        assert!(offers_md5("5"));
        assert!(offers_md5("7,5"));
        assert!(offers_md5("0x5"));
        assert!(!offers_md5("7,6"));
        let mut auth = ChapAuthenticator::new();
        let mut buf = [0u8; 256];
        let mut out = TextWriter::new(&mut buf);
        let keys = TextList::parse(b"CHAP_A=7\0").unwrap();
        assert_eq!(
            auth.send_challenge(&keys, fixed(), &mut out),
            Err(ChapFailure::NoSupportedAlgorithm)
        );
        assert_eq!(text(&out), "CHAP_A=Reject;");
    }

    /// Runs the exchange with `fixed()` and the given second request.
    fn exchange(
        second: &[u8],
        lookup: fn(&str) -> Option<ChapSecrets<'static>>,
    ) -> (Result<ChapStep, ChapFailure>, String) {
        let mut auth = ChapAuthenticator::new();
        let mut buf = [0u8; 512];
        let mut out = TextWriter::new(&mut buf);
        let keys = TextList::parse(b"CHAP_A=5\0").unwrap();
        assert_eq!(
            auth.send_challenge(&keys, fixed(), &mut out),
            Ok(ChapStep::ChallengeSent)
        );
        assert_eq!(
            text(&out),
            "CHAP_A=5;CHAP_I=7;CHAP_C=0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f;"
        );
        let mut buf = [0u8; 512];
        let mut out = TextWriter::new(&mut buf);
        let keys = TextList::parse(second).unwrap();
        let result = auth.step(&keys, lookup, &mut out);
        (result, text(&out))
    }

    fn good_response() -> String {
        let c = fixed();
        format!("{}", Hex(&chap_response(c.id, SECRET, &c.bytes)))
    }

    #[test]
    fn one_way_chap() {
        let second = format!("CHAP_N=alice\0CHAP_R={}\0", good_response());
        let (result, out) = exchange(second.as_bytes(), secrets);
        assert_eq!(
            result,
            Ok(ChapStep::Authenticated {
                user: "alice".into()
            })
        );
        assert_eq!(out, "");

        let (result, _) = exchange(second.replace("alice", "bob").as_bytes(), secrets);
        assert_eq!(result, Err(ChapFailure::BadUser("bob".into())));
        assert_eq!(
            result.unwrap_err().login_status(),
            LoginStatus::AuthenticationFailure
        );

        let mut bad = good_response();
        bad.replace_range(2..4, if &bad[2..4] == "00" { "01" } else { "00" });
        let (result, _) = exchange(format!("CHAP_N=alice\0CHAP_R={bad}\0").as_bytes(), secrets);
        assert_eq!(result, Err(ChapFailure::BadResponse("alice".into())));

        let (result, _) = exchange(b"CHAP_N=alice\0CHAP_R=0x00\0", secrets);
        assert!(matches!(
            result,
            Err(ChapFailure::Malformed { key: "CHAP_R", .. })
        ));
        let (result, _) = exchange(b"CHAP_R=0x00\0", secrets);
        assert!(matches!(
            result,
            Err(ChapFailure::Malformed { key: "CHAP_N", .. })
        ));
    }

    /// A CHAP key the exchange needs that is absent is answered "missing parameter" (0207),
    /// as ctld does; it was the catch-all 0200. A malformed one stays 0200.
    #[test]
    fn absent_chap_keys_are_missing_parameters() {
        let mut chap = ChapAuthenticator::new();
        let mut buf = [0u8; 512];
        let mut out = TextWriter::new(&mut buf);
        let err = chap
            .send_challenge(&TextList::parse(b"X=1\0").unwrap(), fixed(), &mut out)
            .unwrap_err();
        assert_eq!(err.login_status(), LoginStatus::MissingParameter, "{err}");
        let good = good_response();
        for (text, key) in [
            ("CHAP_R=0x00\0".to_string(), "CHAP_N"),
            ("CHAP_N=alice\0".to_string(), "CHAP_R"),
            (format!("CHAP_N=alice\0CHAP_R={good}\0CHAP_I=1\0"), "CHAP_C"),
            (
                format!("CHAP_N=alice\0CHAP_R={good}\0CHAP_C=0x0102\0"),
                "CHAP_I",
            ),
        ] {
            let (result, _) = exchange(text.as_bytes(), mutual);
            let err = result.unwrap_err();
            assert_eq!(
                err.login_status(),
                LoginStatus::MissingParameter,
                "{text:?}: {err}"
            );
            assert!(err.to_string().contains(key), "{text:?}: {err}");
        }
        let (result, _) = exchange(b"CHAP_N=alice\0CHAP_R=0x00\0", secrets);
        assert_eq!(
            result.unwrap_err().login_status(),
            LoginStatus::InitiatorError
        );
    }

    #[test]
    fn mutual_chap() {
        let their_challenge = [0x55u8; 16];
        let second = format!(
            "CHAP_N=alice\0CHAP_R={}\0CHAP_I=9\0CHAP_C={}\0",
            good_response(),
            Hex(&their_challenge)
        );
        let (result, out) = exchange(second.as_bytes(), mutual);
        assert_eq!(
            result,
            Ok(ChapStep::Authenticated {
                user: "alice".into()
            })
        );
        let expected = chap_response(9, TARGET_SECRET, &their_challenge);
        assert_eq!(
            out,
            format!(
                "CHAP_N=iqn.2026-01.com.example:t1;CHAP_R={};",
                Hex(&expected)
            )
        );

        // Mutual asked but not configured, and configured but not asked.
        let (result, _) = exchange(second.as_bytes(), secrets);
        assert_eq!(result, Err(ChapFailure::MutualMismatch("not configured")));
        let one_way = format!("CHAP_N=alice\0CHAP_R={}\0", good_response());
        let (result, _) = exchange(one_way.as_bytes(), mutual);
        assert_eq!(result, Err(ChapFailure::MutualMismatch("required")));
    }

    #[test]
    fn a_successful_exchange_keeps_what_verifies_it_again() {
        let run = |second: String| {
            let mut auth = ChapAuthenticator::new();
            let mut buf = [0u8; 512];
            let mut out = TextWriter::new(&mut buf);
            let keys = TextList::parse(b"CHAP_A=5\0").unwrap();
            auth.send_challenge(&keys, fixed(), &mut out).unwrap();
            assert_eq!(auth.proof(), None);
            let keys = TextList::parse(second.as_bytes()).unwrap();
            let ok = auth.step(&keys, secrets, &mut out).is_ok();
            (ok, auth.proof().cloned())
        };
        let (ok, proof) = run(format!("CHAP_N=alice\0CHAP_R={}\0", good_response()));
        assert!(ok);
        let proof = proof.unwrap();
        assert_eq!(proof.user, "alice");
        assert_eq!((proof.id, proof.challenge), (fixed().id, fixed().bytes));
        assert!(proof.verifies(SECRET));
        assert!(!proof.verifies(TARGET_SECRET));
        assert!(!proof.verifies(b""));
        // A failed exchange leaves nothing to check against.
        let (ok, proof) = run(format!("CHAP_N=bob\0CHAP_R={}\0", good_response()));
        assert!(!ok);
        assert_eq!(proof, None);
    }

    #[test]
    fn reflected_challenge_is_refused() {
        let second = format!(
            "CHAP_N=alice\0CHAP_R={}\0CHAP_I=7\0CHAP_C={}\0",
            good_response(),
            Hex(&fixed().bytes)
        );
        let (result, out) = exchange(second.as_bytes(), mutual);
        assert_eq!(result, Err(ChapFailure::Reflected));
        assert_eq!(out, "");
    }

    #[test]
    fn generated_challenges_differ_and_exchange_ends() {
        let a = Challenge::generate().unwrap();
        let b = Challenge::generate().unwrap();
        assert_ne!(a.bytes, b.bytes);
        let mut auth = ChapAuthenticator::new();
        let mut buf = [0u8; 512];
        let mut out = TextWriter::new(&mut buf);
        let keys = TextList::parse(b"CHAP_A=5\0").unwrap();
        assert_eq!(
            auth.step(&keys, secrets, &mut out),
            Ok(ChapStep::ChallengeSent)
        );
        let keys = TextList::parse(b"CHAP_N=x\0CHAP_R=0x00\0").unwrap();
        assert!(auth.step(&keys, secrets, &mut out).is_err());
        assert_eq!(
            auth.step(&keys, secrets, &mut out),
            Err(ChapFailure::Finished)
        );
    }

    proptest! {
        #[test]
        fn decode_binary_never_panics(value in "0[xXbB][ -~]{0,3000}") {
            let mut buf = [0u8; MAX_BINARY_LEN];
            if let Ok(bytes) = decode_binary("K", &value, &mut buf) {
                prop_assert!(!bytes.is_empty() && bytes.len() <= MAX_BINARY_LEN);
            }
        }

        #[test]
        fn hex_round_trip(bytes in proptest::collection::vec(any::<u8>(), 1..MAX_BINARY_LEN)) {
            let text = format!("{}", Hex(&bytes));
            let mut buf = [0u8; MAX_BINARY_LEN];
            prop_assert_eq!(decode_binary("K", &text, &mut buf).unwrap(), &bytes[..]);
        }
    }
}
