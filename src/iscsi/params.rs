//! Login keys (RFC 7143 section 13) and the target-side negotiator.
//!
//! [`KEYS`] is the one table of every key we know with its negotiation rule, scope and stage.
//! [`Negotiator`] answers an initiator's keys across the login PDUs of one connection, as the
//! responder (the target never opens a negotiation; it only declares `MaxRecvDataSegmentLength`
//! and `TargetPortalGroupTag`), and produces the final [`SessionParams`].
//!
//! Decisions where RFC 7143 leaves room:
//! - `OFMarker`/`IFMarker` are answered `No`, `OFMarkInt`/`IFMarkInt` `Irrelevant` (the RFC 3720
//!   answers that older initiators expect; RFC 7143 13.25 prefers `Reject` for these obsolete
//!   keys: change the `Constant` rows of [`KEYS`] to switch).
//! - A leading-only key on a non-leading connection and a session-wide key the RFC marks
//!   irrelevant for discovery sessions are answered `Irrelevant`.
//! - Security keys in the operational stage and a key negotiated twice during login are protocol
//!   errors (login fails with 0x0200). Operational keys in the security stage are accepted.
//! - `Reject`, `Irrelevant` or `NotUnderstood` offered as a proposal is a protocol error (RFC
//!   7143 §6.2; LIO lets `Irrelevant` pass): login fails with 0x0200, a full-feature-phase Text
//!   Request is answered with a Reject PDU. Sent to a key the target declares
//!   (MaxRecvDataSegmentLength, the target-only keys) such a value is an answer, let be.
//! - Keys sent only by targets (`TargetAlias`, `TargetAddress`, `TargetPortalGroupTag`) are
//!   answered `Reject` when an initiator sends them; `SendTargets` in login is `Irrelevant`.
//! - CHAP keys (`CHAP_*`) are left to [`super::chap`]: the negotiator skips them.
//! - A malformed MaxRecvDataSegmentLength declaration ends the login (it is declarative, so
//!   there is no `Reject` answer for it).
//! - When only MaxBurstLength is negotiated, below the default FirstBurstLength, the
//!   FirstBurstLength in force is lowered to MaxBurstLength; offered together, FirstBurstLength
//!   is answered within the MaxBurstLength the same response settles (SPDK does so too), and
//!   a MaxBurstLength offered later below the FirstBurstLength settled ends the login.
//! - In full feature phase ([`full_feature_key`]) a key whose Use is LO or IO, or that only
//!   targets send, is answered `Reject` (the value stays as login left it), and so is a
//!   malformed MaxRecvDataSegmentLength or InitiatorAlias declaration (the negotiation fails and
//!   changes nothing, RFC 7143 §7.12); valid declarations get no answer.

use thiserror::Error;

use super::pdu::{LoginStatus, Stage};
use super::reader::{LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH, MAX_AHS_LEN, ReaderLimits};
use super::text::{TextError, TextList, TextSink};

/// Longest iSCSI name accepted (RFC 7143 4.2.7.1: 223 bytes).
pub const MAX_NAME_LEN: usize = 223;
/// Longest simple value (RFC 7143 6.1: 255 bytes) for values that are not names or CHAP data.
pub const MAX_SIMPLE_VALUE_LEN: usize = 255;
/// Largest MaxRecvDataSegmentLength / MaxBurstLength / FirstBurstLength (2^24 - 1).
pub const MAX_LENGTH_VALUE: u32 = (1 << 24) - 1;

/// Every key in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Key {
    HeaderDigest,
    DataDigest,
    MaxConnections,
    SendTargets,
    TargetName,
    InitiatorName,
    TargetAlias,
    InitiatorAlias,
    TargetAddress,
    TargetPortalGroupTag,
    InitialR2T,
    ImmediateData,
    MaxRecvDataSegmentLength,
    MaxBurstLength,
    FirstBurstLength,
    DefaultTime2Wait,
    DefaultTime2Retain,
    MaxOutstandingR2T,
    DataPDUInOrder,
    DataSequenceInOrder,
    ErrorRecoveryLevel,
    SessionType,
    AuthMethod,
    OFMarker,
    IFMarker,
    OFMarkInt,
    IFMarkInt,
    TaskReporting,
    IscsiProtocolLevel,
    ChapA,
    ChapI,
    ChapC,
    ChapN,
    ChapR,
}

/// How a key is negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A list of values: we answer the first of the initiator's values we accept.
    List(&'static [&'static str]),
    /// Boolean, the result is the OR of both values.
    Or,
    /// Boolean, the result is the AND of both values.
    And,
    /// Numerical in `lo..=hi`, the result is the minimum.
    Min(u32, u32),
    /// Numerical in `lo..=hi`, the result is the maximum.
    Max(u32, u32),
    /// Numerical in `lo..=hi`, each side declares its own value.
    DeclaredNumber(u32, u32),
    /// Declarative text of at most this many bytes (names, aliases).
    DeclaredText(usize),
    /// Sent by targets only.
    TargetOnly,
    /// Used only in full feature phase (SendTargets).
    FullFeatureOnly,
    /// An obsolete key answered with a constant value.
    Constant(&'static str),
    /// A CHAP key, handled by the authentication code.
    Chap,
}

/// When a key may be used (RFC 7143 section 13, each key's "Use").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// LO: negotiated only in the login of a session's leading connection.
    LeadingOnly,
    /// IO: only during a connection's login.
    InitializeOnly,
    /// ALL: during login and in full feature phase.
    All,
    /// FFPO: only in full feature phase.
    FullFeatureOnly,
}

/// Where a key may appear during login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageUse {
    /// Security negotiation stage only.
    Security,
    /// Operational negotiation stage only.
    Operational,
    /// Either stage (declarations).
    Any,
}

/// One row of the key table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDef {
    /// The key.
    pub key: Key,
    /// Its name on the wire (case-sensitive).
    pub name: &'static str,
    /// Negotiation rule.
    pub rule: Rule,
    /// When it may be used (as sent by an initiator: `TargetName` is IO for initiators).
    pub usage: Usage,
    /// The stage(s) the key belongs to.
    pub stage: StageUse,
    /// Irrelevant when SessionType=Discovery.
    pub irrelevant_in_discovery: bool,
}

const fn def(
    key: Key,
    name: &'static str,
    rule: Rule,
    usage: Usage,
    stage: StageUse,
    irrelevant_in_discovery: bool,
) -> KeyDef {
    KeyDef {
        key,
        name,
        rule,
        usage,
        stage,
        irrelevant_in_discovery,
    }
}

const DIGESTS: &[&str] = &["CRC32C", "None"];
const AUTH_METHODS: &[&str] = &["CHAP", "None", "KRB5", "SRP", "SPKM1", "SPKM2"];
const TASK_REPORTING: &[&str] = &["RFC3720", "ResponseFence", "FastAbort"];
const SESSION_TYPES: &[&str] = &["Discovery", "Normal"];
const LEN: Rule = Rule::Min(512, MAX_LENGTH_VALUE);

use StageUse::{Any, Operational as Op, Security as Sec};
use Usage::{All as ALL, FullFeatureOnly as FFPO, InitializeOnly as IO, LeadingOnly as LO};

/// Every key of RFC 7143 section 13 (plus RFC 7144's iSCSIProtocolLevel) with its rule.
/// Columns: key, name, rule, use (LO leading only, IO initialize only, ALL, FFPO full feature
/// phase only; the obsolete marker keys and the security keys are IO), stage, irrelevant in
/// discovery sessions.
#[rustfmt::skip]
pub const KEYS: &[KeyDef] = &[
    def(Key::HeaderDigest, "HeaderDigest", Rule::List(DIGESTS), IO, Op, false),
    def(Key::DataDigest, "DataDigest", Rule::List(DIGESTS), IO, Op, false),
    def(Key::MaxConnections, "MaxConnections", Rule::Min(1, 65535), LO, Op, true),
    def(Key::SendTargets, "SendTargets", Rule::FullFeatureOnly, FFPO, Any, false),
    def(Key::TargetName, "TargetName", Rule::DeclaredText(MAX_NAME_LEN), IO, Any, false),
    def(Key::InitiatorName, "InitiatorName", Rule::DeclaredText(MAX_NAME_LEN), IO, Any, false),
    def(Key::TargetAlias, "TargetAlias", Rule::TargetOnly, ALL, Any, false),
    def(Key::InitiatorAlias, "InitiatorAlias", Rule::DeclaredText(MAX_SIMPLE_VALUE_LEN), ALL, Any, false),
    def(Key::TargetAddress, "TargetAddress", Rule::TargetOnly, ALL, Any, false),
    def(Key::TargetPortalGroupTag, "TargetPortalGroupTag", Rule::TargetOnly, IO, Any, false),
    def(Key::InitialR2T, "InitialR2T", Rule::Or, LO, Op, true),
    def(Key::ImmediateData, "ImmediateData", Rule::And, LO, Op, true),
    def(Key::MaxRecvDataSegmentLength, "MaxRecvDataSegmentLength", Rule::DeclaredNumber(512, MAX_LENGTH_VALUE), ALL, Op, false),
    def(Key::MaxBurstLength, "MaxBurstLength", LEN, LO, Op, true),
    def(Key::FirstBurstLength, "FirstBurstLength", LEN, LO, Op, true),
    def(Key::DefaultTime2Wait, "DefaultTime2Wait", Rule::Max(0, 3600), LO, Op, false),
    def(Key::DefaultTime2Retain, "DefaultTime2Retain", Rule::Min(0, 3600), LO, Op, false),
    def(Key::MaxOutstandingR2T, "MaxOutstandingR2T", Rule::Min(1, 65535), LO, Op, true),
    def(Key::DataPDUInOrder, "DataPDUInOrder", Rule::Or, LO, Op, true),
    def(Key::DataSequenceInOrder, "DataSequenceInOrder", Rule::Or, LO, Op, true),
    def(Key::ErrorRecoveryLevel, "ErrorRecoveryLevel", Rule::Min(0, 2), LO, Op, false),
    def(Key::SessionType, "SessionType", Rule::List(SESSION_TYPES), LO, Any, false),
    def(Key::AuthMethod, "AuthMethod", Rule::List(AUTH_METHODS), IO, Sec, false),
    def(Key::OFMarker, "OFMarker", Rule::Constant("No"), IO, Op, false),
    def(Key::IFMarker, "IFMarker", Rule::Constant("No"), IO, Op, false),
    def(Key::OFMarkInt, "OFMarkInt", Rule::Constant("Irrelevant"), IO, Op, false),
    def(Key::IFMarkInt, "IFMarkInt", Rule::Constant("Irrelevant"), IO, Op, false),
    def(Key::TaskReporting, "TaskReporting", Rule::List(TASK_REPORTING), LO, Op, true),
    def(Key::IscsiProtocolLevel, "iSCSIProtocolLevel", Rule::Min(0, 31), LO, Op, true),
    def(Key::ChapA, "CHAP_A", Rule::Chap, IO, Sec, false),
    def(Key::ChapI, "CHAP_I", Rule::Chap, IO, Sec, false),
    def(Key::ChapC, "CHAP_C", Rule::Chap, IO, Sec, false),
    def(Key::ChapN, "CHAP_N", Rule::Chap, IO, Sec, false),
    def(Key::ChapR, "CHAP_R", Rule::Chap, IO, Sec, false),
];

/// Looks a key up by its wire name.
pub fn lookup(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|d| d.name == name)
}

/// The row of `key` (every [`Key`] has one; a unit test keeps it so).
pub fn key_def(key: Key) -> &'static KeyDef {
    KEYS.iter().find(|d| d.key == key).unwrap_or(&KEYS[0])
}

/// What one key of a full-feature-phase Text Request asks of the target ([`full_feature_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullFeatureKey<'v> {
    /// `SendTargets` with its value, for the discovery code to answer.
    SendTargets(&'v str),
    /// A valid declaration of the initiator's MaxRecvDataSegmentLength: not answered.
    MaxRecvDataSegmentLength(u32),
    /// A valid declaration of the initiator's alias: not answered.
    InitiatorAlias(&'v str),
    /// Answered with `key=Reject`: a key the target knows that may not be negotiated in full
    /// feature phase, a target-only key, or a malformed or out-of-range declaration. It fails
    /// the negotiation (RFC 7143 §7.12).
    Reject,
    /// Answered with `key=NotUnderstood`: an unknown key (`X-` and `X#` keys included).
    NotUnderstood,
    /// A value reserved for answers (`Reject`, `Irrelevant`, `NotUnderstood`) offered as a
    /// proposal: a protocol error (RFC 7143 §6.2), as in login; the target sends no key in
    /// full feature phase that it could answer.
    ReservedValue,
}

/// How a target at ErrorRecoveryLevel 0 with one connection a session takes one key of a
/// full-feature-phase Text Request (RFC 7143 §6.2 and each key's "Use" in §13):
/// - keys whose Use is ALL or FFPO are taken: SendTargets, and the declarations of
///   MaxRecvDataSegmentLength (512..2^24-1) and InitiatorAlias, which get no answer;
/// - every other key the table knows (LO and IO keys such as MaxBurstLength or HeaderDigest,
///   which cannot change after login, and keys only a target sends) is answered `Reject`, which
///   leaves its value as it is (RFC 7143 §6.2); so is a malformed declaration, which has no
///   value to answer with;
/// - keys the table does not know, private `X-`/`X#` keys included, are `NotUnderstood`.
pub fn full_feature_key<'v>(key: &str, value: &'v str) -> FullFeatureKey<'v> {
    let Some(def) = lookup(key) else {
        return FullFeatureKey::NotUnderstood;
    };
    if is_negotiation_answer(value) {
        return FullFeatureKey::ReservedValue;
    }
    match (def.usage, def.key) {
        (Usage::FullFeatureOnly, Key::SendTargets) => FullFeatureKey::SendTargets(value),
        (Usage::All, Key::MaxRecvDataSegmentLength) => number_in(def.rule, value).map_or(
            FullFeatureKey::Reject,
            FullFeatureKey::MaxRecvDataSegmentLength,
        ),
        (Usage::All, Key::InitiatorAlias) => declared_text(def.key, value)
            .map_or(FullFeatureKey::Reject, FullFeatureKey::InitiatorAlias),
        _ => FullFeatureKey::Reject,
    }
}

/// Session types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    /// Discovery session (SendTargets only).
    Discovery,
    /// Normal session (SCSI I/O).
    Normal,
}

/// Authentication methods we can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No authentication.
    None,
    /// CHAP (MD5).
    Chap,
}

/// Which of two values we accept for a list key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    /// `None` is accepted.
    pub none: bool,
    /// `CRC32C` (digests) or `CHAP` (AuthMethod) is accepted.
    pub other: bool,
}

/// Our limits and preferences (from configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLimits {
    /// HeaderDigest values we accept (`other` = CRC32C).
    pub header_digest: Accept,
    /// DataDigest values we accept (`other` = CRC32C).
    pub data_digest: Accept,
    /// AuthMethod values we accept (`other` = CHAP).
    pub auth: Accept,
    /// MaxConnections we support.
    pub max_connections: u16,
    /// Whether we want InitialR2T=Yes.
    pub initial_r2t: bool,
    /// Whether we accept immediate data.
    pub immediate_data: bool,
    /// The MaxRecvDataSegmentLength we declare (512..2^24-1).
    pub max_recv_data_segment_length: u32,
    /// Our MaxBurstLength (512..2^24-1).
    pub max_burst_length: u32,
    /// Our FirstBurstLength (512..=max_burst_length).
    pub first_burst_length: u32,
    /// Our DefaultTime2Wait (0..3600).
    pub default_time2wait: u16,
    /// Our DefaultTime2Retain (0..3600).
    pub default_time2retain: u16,
    /// Our MaxOutstandingR2T (1..65535).
    pub max_outstanding_r2t: u16,
    /// Whether we want DataPDUInOrder=Yes.
    pub data_pdu_in_order: bool,
    /// Whether we want DataSequenceInOrder=Yes.
    pub data_sequence_in_order: bool,
    /// The ErrorRecoveryLevel we offer (0).
    pub error_recovery_level: u8,
    /// The portal group tag we declare to a login that names a target.
    pub target_portal_group_tag: u16,
}

impl Default for TargetLimits {
    fn default() -> Self {
        Self {
            header_digest: Accept {
                none: true,
                other: true,
            },
            data_digest: Accept {
                none: true,
                other: true,
            },
            auth: Accept {
                none: true,
                other: false,
            },
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            // RFC 7143's default. 256 KiB (what libiscsi and open-iscsi offer) would bring a
            // 128 KiB write whole as immediate data, without an R2T round trip, but the
            // unsolicited bursts outran the kernel's autotuned receive buffer on short round
            // trips (zero windows, retransmissions, 128 KiB write IOPS down by up to 45% in some
            // runs), and a fixed buffer cost 4 KiB reads 15% of their IOPS: see the README.
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 0,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            target_portal_group_tag: 1,
        }
    }
}

impl TargetLimits {
    /// Checks our own values against the ranges of the table.
    pub fn validate(&self) -> Result<(), NegotiateError> {
        let checks: [(Key, u32); 8] = [
            (Key::MaxConnections, self.max_connections.into()),
            (
                Key::MaxRecvDataSegmentLength,
                self.max_recv_data_segment_length,
            ),
            (Key::MaxBurstLength, self.max_burst_length),
            (Key::FirstBurstLength, self.first_burst_length),
            (Key::DefaultTime2Wait, self.default_time2wait.into()),
            (Key::DefaultTime2Retain, self.default_time2retain.into()),
            (Key::MaxOutstandingR2T, self.max_outstanding_r2t.into()),
            (Key::ErrorRecoveryLevel, self.error_recovery_level.into()),
        ];
        for (key, value) in checks {
            let (lo, hi) = range_of(key_def(key).rule);
            if !(lo..=hi).contains(&value) {
                return Err(NegotiateError::BadLimit {
                    key: key_def(key).name,
                    value,
                });
            }
        }
        if self.first_burst_length > self.max_burst_length {
            return Err(NegotiateError::BadLimit {
                key: "FirstBurstLength",
                value: self.first_burst_length,
            });
        }
        Ok(())
    }
}

fn range_of(rule: Rule) -> (u32, u32) {
    match rule {
        Rule::Min(lo, hi) | Rule::Max(lo, hi) | Rule::DeclaredNumber(lo, hi) => (lo, hi),
        _ => (0, u32::MAX),
    }
}

/// The negotiated parameters of a connection and its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// Discovery or Normal.
    pub session_type: SessionType,
    /// InitiatorName.
    pub initiator_name: String,
    /// InitiatorAlias, if declared.
    pub initiator_alias: Option<String>,
    /// TargetName, if declared (always for Normal sessions).
    pub target_name: Option<String>,
    /// The AuthMethod agreed (None when not negotiated).
    pub auth_method: AuthMethod,
    /// CRC32C header digests on this connection.
    pub header_digest: bool,
    /// CRC32C data digests on this connection.
    pub data_digest: bool,
    /// MaxConnections.
    pub max_connections: u16,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// The MaxRecvDataSegmentLength we declared (what we accept).
    pub target_max_recv_data_segment_length: u32,
    /// The initiator's MaxRecvDataSegmentLength (the most we may send in one PDU).
    pub initiator_max_recv_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// DefaultTime2Wait.
    pub default_time2wait: u16,
    /// DefaultTime2Retain.
    pub default_time2retain: u16,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u16,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// ErrorRecoveryLevel.
    pub error_recovery_level: u8,
}

impl SessionParams {
    /// The reader limits for full feature phase on this connection.
    pub fn reader_limits(&self) -> ReaderLimits {
        ReaderLimits {
            max_recv_data_segment_length: self.target_max_recv_data_segment_length,
            max_ahs_len: MAX_AHS_LEN,
            header_digest: self.header_digest,
            data_digest: self.data_digest,
        }
    }
}

/// Login-ending negotiation errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NegotiateError {
    /// A required key is missing (InitiatorName; TargetName for Normal sessions).
    #[error("missing key {0}")]
    Missing(&'static str),
    /// A key was negotiated twice during login.
    #[error("key {0} negotiated twice")]
    Renegotiated(&'static str),
    /// A value reserved for answers (`Reject`, `Irrelevant`, `NotUnderstood`) offered as a
    /// proposal (RFC 7143 §6.2: a protocol error).
    #[error("key {0} offered with a value reserved for answers")]
    ReservedValue(&'static str),
    /// A declaration that only the first login request may make came later and differs from
    /// what is in force (SessionType).
    #[error("key {0} is settled by the first login request")]
    LateDeclaration(&'static str),
    /// A key appeared in a stage where it is not allowed.
    #[error("key {key} not allowed in the {stage:?} stage")]
    WrongStage {
        /// The key.
        key: &'static str,
        /// The stage it came in.
        stage: Stage,
    },
    /// A declarative value is malformed (e.g. an empty or overlong InitiatorName, an unknown
    /// SessionType, a changed declaration).
    #[error("key {key}: malformed or changed value")]
    BadValue {
        /// The key.
        key: &'static str,
    },
    /// The negotiated FirstBurstLength exceeds MaxBurstLength.
    #[error("FirstBurstLength {first} exceeds MaxBurstLength {max}")]
    FirstBurstExceedsMaxBurst {
        /// Negotiated FirstBurstLength.
        first: u32,
        /// Negotiated MaxBurstLength.
        max: u32,
    },
    /// Our response did not fit the response buffer.
    #[error("response text: {0}")]
    Response(#[from] TextError),
    /// A configured limit is outside its key's range.
    #[error("configured {key}={value} is out of range")]
    BadLimit {
        /// The key.
        key: &'static str,
        /// The configured value.
        value: u32,
    },
}

impl NegotiateError {
    /// The login status to answer with.
    pub fn login_status(&self) -> LoginStatus {
        match self {
            Self::Missing(_) => LoginStatus::MissingParameter,
            Self::BadValue { key: "SessionType" } => LoginStatus::SessionTypeNotSupported,
            Self::Response(_) | Self::BadLimit { .. } => LoginStatus::TargetError,
            _ => LoginStatus::InitiatorError,
        }
    }
}

/// What to answer to one key.
enum Answer<'v> {
    /// Answer with this constant.
    Text(&'static str),
    /// Answer with this number.
    Number(u32),
    /// Answer with this value taken from the offer.
    Choice(&'v str),
    /// Answer nothing (declarations).
    Silent,
}

/// The target-side negotiator for one connection's login.
#[derive(Debug, Clone)]
pub struct Negotiator {
    ours: TargetLimits,
    leading: bool,
    /// Keys seen so far, one bit per row of [`KEYS`].
    seen: u64,
    first_done: bool,
    declared_mrdsl: bool,
    /// The MaxBurstLength the request being answered settles, when it offers one: its
    /// FirstBurstLength is answered within it whichever of the two comes first.
    max_burst_ahead: Option<u32>,
    params: SessionParams,
}

impl Negotiator {
    /// A negotiator for the leading connection of a new session.
    pub fn new_leading(ours: TargetLimits) -> Result<Self, NegotiateError> {
        ours.validate()?;
        Ok(Self::with(ours, true, rfc_defaults()))
    }

    /// A negotiator for a connection added to an existing session: session-wide values are
    /// taken from `session` and leading-only keys are answered `Irrelevant`.
    pub fn new_non_leading(
        ours: TargetLimits,
        session: &SessionParams,
    ) -> Result<Self, NegotiateError> {
        ours.validate()?;
        let defaults = rfc_defaults();
        let params = SessionParams {
            header_digest: defaults.header_digest,
            data_digest: defaults.data_digest,
            initiator_max_recv_data_segment_length: defaults.initiator_max_recv_data_segment_length,
            target_max_recv_data_segment_length: defaults.target_max_recv_data_segment_length,
            auth_method: defaults.auth_method,
            ..session.clone()
        };
        Ok(Self::with(ours, false, params))
    }

    fn with(ours: TargetLimits, leading: bool, params: SessionParams) -> Self {
        Self {
            ours,
            leading,
            seen: 0,
            first_done: false,
            declared_mrdsl: false,
            max_burst_ahead: None,
            params,
        }
    }

    /// The session type (known after the first PDU).
    pub fn session_type(&self) -> SessionType {
        self.params.session_type
    }

    /// The InitiatorName (known after the first PDU).
    pub fn initiator_name(&self) -> &str {
        &self.params.initiator_name
    }

    /// The TargetName, if declared.
    pub fn target_name(&self) -> Option<&str> {
        self.params.target_name.as_deref()
    }

    /// The AuthMethod agreed so far.
    pub fn auth_method(&self) -> AuthMethod {
        self.params.auth_method
    }

    /// Whether the initiator offered AuthMethod (when it did not, no authentication happened).
    pub fn auth_method_offered(&self) -> bool {
        self.was_seen(Key::AuthMethod)
    }

    /// Answers the keys of one login request (its whole text, joined across C-bit PDUs) sent in
    /// `stage`, writing our response pairs to `out`.
    pub fn negotiate(
        &mut self,
        stage: Stage,
        keys: &TextList<'_>,
        out: &mut dyn TextSink,
    ) -> Result<(), NegotiateError> {
        if !self.first_done {
            self.first_pdu(keys)?;
        }
        self.max_burst_ahead = keys
            .get("MaxBurstLength")
            .filter(|_| !self.was_seen(Key::MaxBurstLength))
            .and_then(|v| number_in(key_def(Key::MaxBurstLength).rule, v))
            .map(|n| n.min(self.ours.max_burst_length));
        for pair in keys.iter() {
            let Some(def) = lookup(pair.key) else {
                out.push(pair.key, "NotUnderstood")?;
                continue;
            };
            if def.rule == Rule::Chap {
                if stage != Stage::Security {
                    return Err(NegotiateError::WrongStage {
                        key: def.name,
                        stage,
                    });
                }
                continue;
            }
            if is_negotiation_answer(pair.value) {
                // An answer to a key the target sends (its declarations) needs nothing; to any
                // other, it is a proposal of a reserved value (RFC 7143 §6.2).
                if target_declares(def.key) {
                    continue;
                }
                return Err(NegotiateError::ReservedValue(def.name));
            }
            self.check_stage(def, stage)?;
            // The first PDU's declarations were recorded by `first_pdu` already.
            let first_declaration = !self.first_done && is_first_pdu_declaration(def.key);
            if self.was_seen(def.key) && !first_declaration {
                return Err(NegotiateError::Renegotiated(def.name));
            }
            self.mark_seen(def.key);
            match self.answer(def, pair.value)? {
                Answer::Text(text) => out.push(def.name, text)?,
                Answer::Number(n) => out.push_fmt(def.name, format_args!("{n}"))?,
                Answer::Choice(value) => out.push(def.name, value)?,
                Answer::Silent => {}
            }
        }
        self.declare(stage, out)?;
        self.first_done = true;
        Ok(())
    }

    /// The final parameters, once the login transits to full feature phase.
    pub fn finish(&self) -> Result<SessionParams, NegotiateError> {
        let mut params = self.params.clone();
        if !self.declared_mrdsl {
            params.target_max_recv_data_segment_length = LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH;
        }
        let over = params.first_burst_length > params.max_burst_length;
        if over && !self.was_seen(Key::FirstBurstLength) {
            // Only MaxBurstLength was negotiated, below the default FirstBurstLength.
            params.first_burst_length = params.max_burst_length;
        } else if over && params.session_type == SessionType::Normal {
            return Err(NegotiateError::FirstBurstExceedsMaxBurst {
                first: params.first_burst_length,
                max: params.max_burst_length,
            });
        }
        Ok(params)
    }

    /// Records the declarations that must come in the first login request.
    fn first_pdu(&mut self, keys: &TextList<'_>) -> Result<(), NegotiateError> {
        let name = keys
            .get("InitiatorName")
            .ok_or(NegotiateError::Missing("InitiatorName"))?;
        let name = declared_text(Key::InitiatorName, name)?;
        if !self.leading && name != self.params.initiator_name {
            return Err(NegotiateError::BadValue {
                key: "InitiatorName",
            });
        }
        self.params.initiator_name = name.to_owned();
        self.mark_seen(Key::InitiatorName);
        if let Some(value) = keys.get("SessionType") {
            let session_type = parse_session_type(value)?;
            if !self.leading && session_type != self.params.session_type {
                return Err(NegotiateError::BadValue { key: "SessionType" });
            }
            self.params.session_type = session_type;
            self.mark_seen(Key::SessionType);
        }
        match keys.get("TargetName") {
            Some(value) => {
                self.params.target_name = Some(declared_text(Key::TargetName, value)?.to_owned());
                self.mark_seen(Key::TargetName);
            }
            None if self.params.session_type == SessionType::Normal => {
                return Err(NegotiateError::Missing("TargetName"));
            }
            None => {}
        }
        Ok(())
    }

    fn check_stage(&self, def: &KeyDef, stage: Stage) -> Result<(), NegotiateError> {
        let ok = match def.stage {
            StageUse::Any => stage != Stage::FullFeature,
            StageUse::Security => stage == Stage::Security,
            // Operational keys in the security stage are accepted, as ctld and SPDK accept them:
            // some initiators send them early, and refusing them gains nothing.
            StageUse::Operational => stage != Stage::FullFeature,
        };
        if ok {
            Ok(())
        } else {
            Err(NegotiateError::WrongStage {
                key: def.name,
                stage,
            })
        }
    }

    fn bit(key: Key) -> u64 {
        let index = KEYS.iter().position(|d| d.key == key).unwrap_or(0);
        1u64 << (index % 64)
    }

    fn was_seen(&self, key: Key) -> bool {
        self.seen & Self::bit(key) != 0
    }

    fn mark_seen(&mut self, key: Key) {
        self.seen |= Self::bit(key);
    }

    /// Our declarations: TargetPortalGroupTag in the first response when the first request
    /// named a target (a normal session always does; RFC 7143 §6.3: "for all session types
    /// when TargetName is given"), MaxRecvDataSegmentLength once in the operational stage.
    fn declare(&mut self, stage: Stage, out: &mut dyn TextSink) -> Result<(), NegotiateError> {
        // An initiator that sent TargetPortalGroupTag itself got `Reject` for it instead.
        let tpgt_answered = self.was_seen(Key::TargetPortalGroupTag);
        if !self.first_done && self.params.target_name.is_some() && !tpgt_answered {
            let tag = self.ours.target_portal_group_tag;
            out.push_fmt("TargetPortalGroupTag", format_args!("{tag}"))?;
        }
        if stage == Stage::Operational && !self.declared_mrdsl {
            let ours = self.ours.max_recv_data_segment_length;
            out.push_fmt("MaxRecvDataSegmentLength", format_args!("{ours}"))?;
            self.declared_mrdsl = true;
            self.params.target_max_recv_data_segment_length = ours;
        }
        Ok(())
    }

    /// InitiatorName, TargetName, SessionType are recorded from the first PDU by `first_pdu`
    /// (repeating them later is a renegotiation); a discovery session may still declare its
    /// TargetName later. The first request settled the session type (Normal when it gave
    /// none): a later SessionType may only say the same.
    fn late_declaration<'v>(
        &mut self,
        def: &KeyDef,
        value: &'v str,
    ) -> Result<Answer<'v>, NegotiateError> {
        if self.first_done && def.key == Key::TargetName {
            self.params.target_name = Some(declared_text(def.key, value)?.to_owned());
        }
        if self.first_done
            && def.key == Key::SessionType
            && parse_session_type(value) != Ok(self.params.session_type)
        {
            return Err(NegotiateError::LateDeclaration(def.name));
        }
        Ok(Answer::Silent)
    }

    /// Computes the answer to one key and records the result.
    fn answer<'v>(&mut self, def: &KeyDef, value: &'v str) -> Result<Answer<'v>, NegotiateError> {
        if is_first_pdu_declaration(def.key) {
            return self.late_declaration(def, value);
        }
        if def.usage == Usage::LeadingOnly && !self.leading {
            return Ok(Answer::Text("Irrelevant"));
        }
        if def.irrelevant_in_discovery && self.params.session_type == SessionType::Discovery {
            return Ok(Answer::Text("Irrelevant"));
        }
        let ours = &self.ours;
        let p = &mut self.params;
        Ok(match def.key {
            Key::InitiatorAlias => {
                p.initiator_alias = Some(declared_text(def.key, value)?.to_owned());
                Answer::Silent
            }
            Key::SendTargets => Answer::Text("Irrelevant"),
            Key::TargetAlias | Key::TargetAddress | Key::TargetPortalGroupTag => {
                Answer::Text("Reject")
            }
            Key::HeaderDigest => {
                digest_choice(def, value, ours.header_digest, &mut p.header_digest)
            }
            Key::DataDigest => digest_choice(def, value, ours.data_digest, &mut p.data_digest),
            Key::AuthMethod => auth_choice(def, value, ours.auth, &mut p.auth_method),
            Key::TaskReporting => match first_accepted(def, value, |v| v == "RFC3720") {
                Some(choice) => Answer::Choice(choice),
                None => Answer::Text("Reject"),
            },
            Key::OFMarker | Key::IFMarker | Key::OFMarkInt | Key::IFMarkInt => match def.rule {
                Rule::Constant(text) => Answer::Text(text),
                _ => Answer::Text("Reject"),
            },
            Key::InitialR2T => boolean(value, ours.initial_r2t, true, &mut p.initial_r2t),
            Key::ImmediateData => boolean(value, ours.immediate_data, false, &mut p.immediate_data),
            Key::DataPDUInOrder => boolean(
                value,
                ours.data_pdu_in_order,
                true,
                &mut p.data_pdu_in_order,
            ),
            Key::DataSequenceInOrder => boolean(
                value,
                ours.data_sequence_in_order,
                true,
                &mut p.data_sequence_in_order,
            ),
            // A declaration: we answer with our own value (see `declare`), so a malformed one
            // cannot be answered with Reject and ends the login.
            Key::MaxRecvDataSegmentLength => {
                p.initiator_max_recv_data_segment_length =
                    number_in(def.rule, value).ok_or(NegotiateError::BadValue { key: def.name })?;
                Answer::Silent
            }
            Key::MaxConnections => numeric(def.rule, value, ours.max_connections.into(), |n| {
                p.max_connections = clamp_u16(n)
            }),
            Key::MaxBurstLength => numeric(def.rule, value, ours.max_burst_length, |n| {
                p.max_burst_length = n
            }),
            Key::FirstBurstLength => {
                // RFC 7143 §13.14: never past the MaxBurstLength in force, nor past the one
                // this request settles.
                let ahead = self.max_burst_ahead.unwrap_or(u32::MAX);
                let cap = ours.first_burst_length.min(p.max_burst_length).min(ahead);
                numeric(def.rule, value, cap, |n| p.first_burst_length = n)
            }
            Key::DefaultTime2Wait => numeric(def.rule, value, ours.default_time2wait.into(), |n| {
                p.default_time2wait = clamp_u16(n)
            }),
            Key::DefaultTime2Retain => {
                numeric(def.rule, value, ours.default_time2retain.into(), |n| {
                    p.default_time2retain = clamp_u16(n)
                })
            }
            Key::MaxOutstandingR2T => {
                numeric(def.rule, value, ours.max_outstanding_r2t.into(), |n| {
                    p.max_outstanding_r2t = clamp_u16(n)
                })
            }
            Key::ErrorRecoveryLevel => {
                numeric(def.rule, value, ours.error_recovery_level.into(), |n| {
                    p.error_recovery_level = u8::try_from(n).unwrap_or(0)
                })
            }
            // We implement RFC 7143, protocol level 1.
            Key::IscsiProtocolLevel => numeric(def.rule, value, 1, |_| {}),
            Key::InitiatorName
            | Key::TargetName
            | Key::SessionType
            | Key::ChapA
            | Key::ChapI
            | Key::ChapC
            | Key::ChapN
            | Key::ChapR => Answer::Silent,
        })
    }
}

/// Declarations that the first login request carries.
fn is_first_pdu_declaration(key: Key) -> bool {
    matches!(key, Key::InitiatorName | Key::TargetName | Key::SessionType)
}

/// Values that answer a negotiation rather than open one (RFC 7143 §6.2: reserved; offered as
/// a proposal they are a protocol error).
fn is_negotiation_answer(value: &str) -> bool {
    matches!(value, "Reject" | "Irrelevant" | "NotUnderstood")
}

/// Keys the target sends during login (declarations): an initiator's answer to them is let be.
fn target_declares(key: Key) -> bool {
    key == Key::MaxRecvDataSegmentLength || key_def(key).rule == Rule::TargetOnly
}

fn clamp_u16(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The RFC 7143 defaults, in force for keys nobody negotiates.
fn rfc_defaults() -> SessionParams {
    SessionParams {
        session_type: SessionType::Normal,
        initiator_name: String::new(),
        initiator_alias: None,
        target_name: None,
        auth_method: AuthMethod::None,
        header_digest: false,
        data_digest: false,
        max_connections: 1,
        initial_r2t: true,
        immediate_data: true,
        target_max_recv_data_segment_length: LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH,
        initiator_max_recv_data_segment_length: LOGIN_MAX_RECV_DATA_SEGMENT_LENGTH,
        max_burst_length: 262_144,
        first_burst_length: 65_536,
        default_time2wait: 2,
        default_time2retain: 20,
        max_outstanding_r2t: 1,
        data_pdu_in_order: true,
        data_sequence_in_order: true,
        error_recovery_level: 0,
    }
}

/// A declarative text value: non-empty and within the key's length.
fn declared_text(key: Key, value: &str) -> Result<&str, NegotiateError> {
    let def = key_def(key);
    let max = match def.rule {
        Rule::DeclaredText(max) => max,
        _ => MAX_SIMPLE_VALUE_LEN,
    };
    if value.is_empty() || value.len() > max {
        return Err(NegotiateError::BadValue { key: def.name });
    }
    Ok(value)
}

fn parse_session_type(value: &str) -> Result<SessionType, NegotiateError> {
    match value {
        "Discovery" => Ok(SessionType::Discovery),
        "Normal" => Ok(SessionType::Normal),
        _ => Err(NegotiateError::BadValue { key: "SessionType" }),
    }
}

/// The first of the offered values (comma-separated) that is a known value of `def` and that
/// `accept` admits, as a slice of the offer.
fn first_accepted<'v>(
    def: &KeyDef,
    offer: &'v str,
    accept: impl Fn(&str) -> bool,
) -> Option<&'v str> {
    let known: &[&str] = match def.rule {
        Rule::List(values) => values,
        _ => &[],
    };
    offer.split(',').find(|v| known.contains(v) && accept(v))
}

/// A list key with the values `None` and `other`.
fn pick<'v>(def: &KeyDef, offer: &'v str, accept: Accept, other: &str) -> Option<&'v str> {
    first_accepted(def, offer, |v| {
        (v == "None" && accept.none) || (v == other && accept.other)
    })
}

fn digest_choice<'v>(
    def: &KeyDef,
    offer: &'v str,
    accept: Accept,
    result: &mut bool,
) -> Answer<'v> {
    match pick(def, offer, accept, "CRC32C") {
        Some(choice) => {
            *result = choice == "CRC32C";
            Answer::Choice(choice)
        }
        None => Answer::Text("Reject"),
    }
}

fn auth_choice<'v>(
    def: &KeyDef,
    offer: &'v str,
    accept: Accept,
    result: &mut AuthMethod,
) -> Answer<'v> {
    match pick(def, offer, accept, "CHAP") {
        Some(choice) => {
            *result = if choice == "CHAP" {
                AuthMethod::Chap
            } else {
                AuthMethod::None
            };
            Answer::Choice(choice)
        }
        None => Answer::Text("Reject"),
    }
}

/// A boolean key: OR (`or == true`) or AND of both sides.
fn boolean<'v>(offer: &str, ours: bool, or: bool, result: &mut bool) -> Answer<'v> {
    let theirs = match offer {
        "Yes" => true,
        "No" => false,
        _ => return Answer::Text("Reject"),
    };
    *result = if or { theirs || ours } else { theirs && ours };
    Answer::Text(if *result { "Yes" } else { "No" })
}

/// A numerical key with a Min or Max result function.
fn numeric<'v>(rule: Rule, offer: &str, ours: u32, store: impl FnOnce(u32)) -> Answer<'v> {
    let Some(theirs) = number_in(rule, offer) else {
        return Answer::Text("Reject");
    };
    let result = match rule {
        Rule::Max(..) => theirs.max(ours),
        _ => theirs.min(ours),
    };
    store(result);
    Answer::Number(result)
}

/// Parses a numerical value within the rule's range.
fn number_in(rule: Rule, value: &str) -> Option<u32> {
    let (lo, hi) = range_of(rule);
    let n = parse_number(value)?;
    (lo..=hi).contains(&n).then_some(n)
}

/// Parses a numerical value (RFC 7143 §6.1): a decimal-constant (a single 0, or digits not
/// starting with 0), or hex digits after `0x`/`0X`; `None` when malformed or above `u32::MAX`.
pub fn parse_number(value: &str) -> Option<u32> {
    let (digits, radix) = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => (hex, 16),
        None => (value, 10),
    };
    if digits.is_empty() || digits.len() > 16 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    if radix == 10 && digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::text::{OutgoingText, TextWriter};
    use proptest::prelude::*;

    fn run(n: &mut Negotiator, stage: Stage, text: &[u8]) -> Result<String, NegotiateError> {
        let mut buf = vec![0u8; 8192];
        let mut w = TextWriter::new(&mut buf);
        let list = TextList::parse(text).expect("valid text");
        n.negotiate(stage, &list, &mut w)?;
        Ok(String::from_utf8(w.as_bytes().to_vec())
            .unwrap()
            .replace('\0', ";"))
    }

    fn leading() -> Negotiator {
        Negotiator::new_leading(TargetLimits::default()).unwrap()
    }

    /// A leading connection's negotiator that has taken `first` (the first request, in the
    /// security stage), with its answer.
    fn opened(first: &[u8]) -> (Negotiator, String) {
        let mut n = leading();
        let answer = run(&mut n, Stage::Security, first).unwrap();
        (n, answer)
    }

    #[test]
    fn full_feature_phase_takes_only_keys_whose_use_allows_it() {
        for d in KEYS {
            let value = match d.rule {
                Rule::DeclaredNumber(lo, _) | Rule::Min(lo, _) | Rule::Max(lo, _) => lo.to_string(),
                _ => "x".into(),
            };
            let taken = full_feature_key(d.name, &value) != FullFeatureKey::Reject;
            let usable = matches!(d.usage, Usage::All | Usage::FullFeatureOnly)
                && d.rule != Rule::TargetOnly;
            assert_eq!(taken, usable, "{}", d.name);
        }
        assert_eq!(
            full_feature_key("MaxRecvDataSegmentLength", "0x1000"),
            FullFeatureKey::MaxRecvDataSegmentLength(4096)
        );
        for bad in ["511", "16777216", "", "-1", "4096 "] {
            assert_eq!(
                full_feature_key("MaxRecvDataSegmentLength", bad),
                FullFeatureKey::Reject,
                "{bad:?}"
            );
        }
        assert_eq!(
            full_feature_key("InitiatorAlias", &"a".repeat(256)),
            FullFeatureKey::Reject
        );
        assert_eq!(
            full_feature_key("SendTargets", "All"),
            FullFeatureKey::SendTargets("All")
        );
        for unknown in ["X-com.example.k", "X#k", "Foo", "maxburstlength"] {
            assert_eq!(
                full_feature_key(unknown, "1"),
                FullFeatureKey::NotUnderstood
            );
        }
        for reserved in ["Reject", "Irrelevant", "NotUnderstood"] {
            assert_eq!(
                full_feature_key("MaxBurstLength", reserved),
                FullFeatureKey::ReservedValue
            );
        }
    }

    /// RFC 7143 §6.2: "Reject", "Irrelevant" and "NotUnderstood" only answer a key; offered
    /// as a proposal they are a protocol error. They were ignored, leaving the key unnegotiated
    /// (a later real offer of it was then taken). An answer to a key the target declares stays
    /// ignored; an unknown key is still NotUnderstood whatever its value.
    #[test]
    fn answer_values_offered_as_proposals_fail_the_login() {
        for reserved in ["Reject", "Irrelevant", "NotUnderstood"] {
            let mut n = leading();
            let text =
                format!("InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0MaxBurstLength={reserved}\0");
            let err = run(&mut n, Stage::Operational, text.as_bytes()).unwrap_err();
            assert_eq!(err, NegotiateError::ReservedValue("MaxBurstLength"));
            assert_eq!(err.login_status(), LoginStatus::InitiatorError);
        }
        let mut n = leading();
        let op = run(
            &mut n,
            Stage::Operational,
            b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0TargetPortalGroupTag=NotUnderstood\0\
X-com.example.k=Reject\0",
        )
        .unwrap();
        assert_eq!(
            op,
            "X-com.example.k=NotUnderstood;TargetPortalGroupTag=1;MaxRecvDataSegmentLength=262144;"
        );
        assert_eq!(
            run(
                &mut n,
                Stage::Operational,
                b"MaxRecvDataSegmentLength=Irrelevant\0"
            )
            .unwrap(),
            ""
        );
    }

    #[test]
    fn table_has_every_key_once_and_fits_the_bitmask() {
        assert!(KEYS.len() <= 64);
        for (i, d) in KEYS.iter().enumerate() {
            assert_eq!(lookup(d.name).map(|x| x.key), Some(d.key), "{}", d.name);
            assert_eq!(key_def(d.key).name, d.name);
            assert!(KEYS[..i].iter().all(|o| o.key != d.key && o.name != d.name));
            assert!(
                crate::iscsi::text::TextList::parse(format!("{}=x\0", d.name).as_bytes()).is_ok()
            );
        }
    }

    #[test]
    fn libiscsi_style_login() {
        let mut n = leading();
        let sec = run(
            &mut n,
            Stage::Security,
            b"InitiatorName=iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test\0InitiatorAlias=test\0\
TargetName=iqn.2026-01.com.example:t1\0SessionType=Normal\0AuthMethod=CHAP,None\0",
        )
        .unwrap();
        assert_eq!(sec, "AuthMethod=None;TargetPortalGroupTag=1;");
        assert_eq!(n.target_name(), Some("iqn.2026-01.com.example:t1"));
        assert!(n.auth_method_offered());
        let op = run(
            &mut n,
            Stage::Operational,
            b"HeaderDigest=None,CRC32C\0DataDigest=None\0InitialR2T=Yes\0ImmediateData=Yes\0\
MaxBurstLength=262144\0FirstBurstLength=262144\0MaxRecvDataSegmentLength=262144\0\
DataPDUInOrder=Yes\0DefaultTime2Wait=2\0DefaultTime2Retain=0\0IFMarker=No\0OFMarker=No\0\
MaxConnections=1\0MaxOutstandingR2T=1\0ErrorRecoveryLevel=0\0DataSequenceInOrder=Yes\0\
X-com.example.Foo=1\0",
        )
        .unwrap();
        assert_eq!(
            op,
            "HeaderDigest=None;DataDigest=None;InitialR2T=Yes;ImmediateData=Yes;MaxBurstLength=262144;\
FirstBurstLength=65536;DataPDUInOrder=Yes;DefaultTime2Wait=2;DefaultTime2Retain=0;IFMarker=No;\
OFMarker=No;MaxConnections=1;MaxOutstandingR2T=1;ErrorRecoveryLevel=0;DataSequenceInOrder=Yes;\
X-com.example.Foo=NotUnderstood;MaxRecvDataSegmentLength=262144;"
        );
        let p = n.finish().unwrap();
        assert_eq!(p.initiator_alias.as_deref(), Some("test"));
        assert_eq!(
            (p.max_burst_length, p.first_burst_length),
            (262_144, 65_536)
        );
        assert_eq!(p.initiator_max_recv_data_segment_length, 262_144);
        assert_eq!(p.target_max_recv_data_segment_length, 262_144);
        assert!(!p.header_digest && p.initial_r2t && p.immediate_data);
        assert_eq!(p.default_time2retain, 0);
        assert_eq!(p.reader_limits().max_recv_data_segment_length, 262_144);
    }

    #[test]
    fn picks_crc32c_and_chap_in_initiator_order() {
        let ours = TargetLimits {
            auth: Accept {
                none: false,
                other: true,
            },
            ..TargetLimits::default()
        };
        let mut n = Negotiator::new_leading(ours).unwrap();
        let sec = run(
            &mut n,
            Stage::Security,
            b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0AuthMethod=None,CHAP\0",
        )
        .unwrap();
        assert!(sec.starts_with("AuthMethod=CHAP;"), "{sec}");
        assert_eq!(n.auth_method(), AuthMethod::Chap);
        run(
            &mut n,
            Stage::Operational,
            b"HeaderDigest=CRC32C,None\0DataDigest=CRC32C\0",
        )
        .unwrap();
        let p = n.finish().unwrap();
        assert!(p.header_digest && p.data_digest);
        assert!(p.reader_limits().header_digest);
    }

    #[test]
    fn rejects_out_of_range_and_malformed() {
        let ours = TargetLimits {
            header_digest: Accept {
                none: true,
                other: false,
            },
            ..TargetLimits::default()
        };
        let mut n = Negotiator::new_leading(ours).unwrap();
        run(
            &mut n,
            Stage::Security,
            b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0",
        )
        .unwrap();
        let op = run(
            &mut n,
            Stage::Operational,
            b"MaxBurstLength=511\0FirstBurstLength=0x1000\0MaxConnections=abc\0InitialR2T=maybe\0\
HeaderDigest=CRC32C\0DefaultTime2Wait=3601\0ErrorRecoveryLevel=2\0\
DefaultTime2Retain=99999999999999999999\0TaskReporting=FastAbort\0",
        )
        .unwrap();
        assert_eq!(
            op,
            "MaxBurstLength=Reject;FirstBurstLength=4096;MaxConnections=Reject;InitialR2T=Reject;\
HeaderDigest=Reject;DefaultTime2Wait=Reject;ErrorRecoveryLevel=0;DefaultTime2Retain=Reject;\
TaskReporting=Reject;MaxRecvDataSegmentLength=262144;"
        );
        let p = n.finish().unwrap();
        assert_eq!((p.max_burst_length, p.first_burst_length), (262_144, 4096));
        assert_eq!(p.default_time2retain, 20);
    }

    #[test]
    fn malformed_max_recv_data_segment_length_ends_login() {
        let (mut n, _) = opened(b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0");
        let err = run(
            &mut n,
            Stage::Operational,
            b"MaxRecvDataSegmentLength=100\0",
        )
        .unwrap_err();
        assert_eq!(
            err,
            NegotiateError::BadValue {
                key: "MaxRecvDataSegmentLength"
            }
        );
        assert_eq!(err.login_status(), LoginStatus::InitiatorError);
    }

    #[test]
    fn boolean_and_max_rules() {
        let ours = TargetLimits {
            initial_r2t: false,
            immediate_data: false,
            default_time2wait: 5,
            ..TargetLimits::default()
        };
        let mut n = Negotiator::new_leading(ours).unwrap();
        run(
            &mut n,
            Stage::Security,
            b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0",
        )
        .unwrap();
        let op = run(
            &mut n,
            Stage::Operational,
            b"InitialR2T=No\0ImmediateData=Yes\0DefaultTime2Wait=1\0DataPDUInOrder=No\0",
        )
        .unwrap();
        assert!(
            op.starts_with("InitialR2T=No;ImmediateData=No;DefaultTime2Wait=5;DataPDUInOrder=Yes;"),
            "{op}"
        );
    }

    #[test]
    fn discovery_session_irrelevant_keys() {
        let mut n = leading();
        let op = run(
            &mut n,
            Stage::Operational,
            b"InitiatorName=iqn.a:b\0SessionType=Discovery\0MaxBurstLength=4096\0InitialR2T=No\0\
HeaderDigest=None\0MaxRecvDataSegmentLength=8192\0SendTargets=All\0",
        )
        .unwrap();
        assert_eq!(
            op,
            "MaxBurstLength=Irrelevant;InitialR2T=Irrelevant;HeaderDigest=None;\
SendTargets=Irrelevant;MaxRecvDataSegmentLength=262144;"
        );
        let p = n.finish().unwrap();
        assert_eq!(p.session_type, SessionType::Discovery);
        assert_eq!(p.target_name, None);
        assert_eq!(p.initiator_max_recv_data_segment_length, 8192);
    }

    /// RFC 7143 §6.3: the target returns TargetPortalGroupTag in its first response "for all
    /// session types when TargetName is given". A discovery session that named a target got
    /// none.
    #[test]
    fn a_discovery_session_naming_a_target_is_told_the_portal_group_tag() {
        let (_, first) =
            opened(b"InitiatorName=iqn.a:b\0SessionType=Discovery\0TargetName=iqn.a:t\0");
        assert_eq!(first, "TargetPortalGroupTag=1;");
        // Without a TargetName a discovery session is told none; once only.
        let (mut n, first) = opened(b"InitiatorName=iqn.a:b\0SessionType=Discovery\0");
        assert_eq!(first, "");
        assert_eq!(
            run(&mut n, Stage::Security, b"TargetName=iqn.a:t\0").unwrap(),
            ""
        );
    }

    #[test]
    fn missing_and_repeated_and_wrong_stage() {
        let mut n = leading();
        let err = run(&mut n, Stage::Security, b"TargetName=iqn.c:d\0").unwrap_err();
        assert_eq!(err, NegotiateError::Missing("InitiatorName"));
        assert_eq!(err.login_status(), LoginStatus::MissingParameter);

        let mut n = leading();
        let err = run(&mut n, Stage::Security, b"InitiatorName=iqn.a:b\0").unwrap_err();
        assert_eq!(err, NegotiateError::Missing("TargetName"));

        let mut n = leading();
        let err = run(
            &mut n,
            Stage::Security,
            b"InitiatorName=iqn.a:b\0SessionType=Weird\0",
        )
        .unwrap_err();
        assert_eq!(err.login_status(), LoginStatus::SessionTypeNotSupported);

        let (mut n, _) = opened(b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0");
        // An operational key in the security stage is negotiated there (as ctld and SPDK do).
        run(&mut n, Stage::Security, b"MaxBurstLength=4096\0").unwrap();
        let err = run(&mut n, Stage::Operational, b"MaxBurstLength=8192\0").unwrap_err();
        assert_eq!(err, NegotiateError::Renegotiated("MaxBurstLength"));
        assert_eq!(err.login_status(), LoginStatus::InitiatorError);
        let err = run(&mut n, Stage::Operational, b"AuthMethod=None\0").unwrap_err();
        assert!(matches!(
            err,
            NegotiateError::WrongStage {
                key: "AuthMethod",
                ..
            }
        ));
        let err = run(&mut n, Stage::Operational, b"CHAP_A=5\0").unwrap_err();
        assert!(matches!(
            err,
            NegotiateError::WrongStage { key: "CHAP_A", .. }
        ));
        let err = run(&mut n, Stage::Operational, b"InitiatorName=iqn.other:x\0").unwrap_err();
        assert_eq!(err, NegotiateError::Renegotiated("InitiatorName"));
        // Only MaxBurstLength was negotiated: FirstBurstLength follows it down.
        assert_eq!(n.finish().unwrap().first_burst_length, 4096);
    }

    /// The session type is settled by the first request (RFC 7143 §6.3: SessionType comes with
    /// the initial Login Request; without it the session is Normal, and the target was chosen,
    /// checked and authenticated as such). A later SessionType=Discovery was taken silently and
    /// the session stayed Normal, the two sides then holding different session types; a later
    /// one that says what is in force changes nothing.
    #[test]
    fn a_session_type_changed_after_the_first_request_fails_the_login() {
        let (mut n, _) = opened(b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0");
        let err = run(&mut n, Stage::Operational, b"SessionType=Discovery\0").unwrap_err();
        assert_eq!(err, NegotiateError::LateDeclaration("SessionType"));
        assert_eq!(err.login_status(), LoginStatus::InitiatorError);
        let (mut n, _) = opened(b"InitiatorName=iqn.a:b\0SessionType=Discovery\0");
        // Given in the first request, it is not given again.
        let err = run(&mut n, Stage::Operational, b"SessionType=Discovery\0").unwrap_err();
        assert_eq!(err, NegotiateError::Renegotiated("SessionType"));
        let (mut n, _) = opened(b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0");
        assert_eq!(
            run(&mut n, Stage::Operational, b"SessionType=Normal\0").unwrap(),
            "MaxRecvDataSegmentLength=262144;"
        );
        assert_eq!(n.finish().unwrap().session_type, SessionType::Normal);
    }

    /// RFC 7143 §13.14: FirstBurstLength MUST NOT exceed MaxBurstLength. Offered in one
    /// request, FirstBurstLength before a lower MaxBurstLength, the target answered each on its
    /// own (65536, 4096), then failed the login for the pair it had chosen itself; it answers
    /// FirstBurstLength within the MaxBurstLength it settles in the same response, as it did
    /// with the keys the other way round.
    #[test]
    fn first_burst_answered_within_the_max_burst_of_the_same_request() {
        for text in [
            &b"FirstBurstLength=65536\0MaxBurstLength=4096\0"[..],
            b"MaxBurstLength=4096\0FirstBurstLength=65536\0",
        ] {
            let (mut n, _) = opened(b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0");
            let op = run(&mut n, Stage::Operational, text).unwrap();
            assert!(op.contains("FirstBurstLength=4096;"), "{op}");
            assert!(op.contains("MaxBurstLength=4096;"), "{op}");
            let p = n.finish().unwrap();
            assert_eq!((p.first_burst_length, p.max_burst_length), (4096, 4096));
        }
        // A MaxBurstLength that is not taken (out of range, or an answer) caps nothing.
        let (mut n, _) = opened(b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0");
        let op = run(
            &mut n,
            Stage::Operational,
            b"FirstBurstLength=65536\0MaxBurstLength=100\0",
        )
        .unwrap();
        assert_eq!(
            op,
            "FirstBurstLength=65536;MaxBurstLength=Reject;MaxRecvDataSegmentLength=262144;"
        );
    }

    /// A MaxBurstLength below the FirstBurstLength settled in an earlier request cannot be met
    /// (neither answer may grow past the offer): the login fails.
    #[test]
    fn first_burst_above_a_later_max_burst_fails() {
        let (mut n, _) =
            opened(b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0FirstBurstLength=65536\0");
        run(&mut n, Stage::Operational, b"MaxBurstLength=4096\0").unwrap();
        assert_eq!(
            n.finish(),
            Err(NegotiateError::FirstBurstExceedsMaxBurst {
                first: 65536,
                max: 4096
            })
        );
    }

    #[test]
    fn chap_keys_are_left_to_the_authenticator() {
        let ours = TargetLimits {
            auth: Accept {
                none: false,
                other: true,
            },
            ..TargetLimits::default()
        };
        let mut n = Negotiator::new_leading(ours).unwrap();
        run(
            &mut n,
            Stage::Security,
            b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0AuthMethod=CHAP\0",
        )
        .unwrap();
        let out = run(&mut n, Stage::Security, b"CHAP_A=5\0").unwrap();
        assert_eq!(out, "");
    }

    #[test]
    fn non_leading_connection() {
        let mut lead = leading();
        run(
            &mut lead,
            Stage::Operational,
            b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0MaxBurstLength=4096\0FirstBurstLength=2048\0",
        )
        .unwrap();
        let session = lead.finish().unwrap();
        let mut n = Negotiator::new_non_leading(TargetLimits::default(), &session).unwrap();
        let op = run(
            &mut n,
            Stage::Operational,
            b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0MaxBurstLength=65536\0HeaderDigest=CRC32C\0\
TargetAlias=x\0",
        )
        .unwrap();
        assert_eq!(
            op,
            "MaxBurstLength=Irrelevant;HeaderDigest=CRC32C;TargetAlias=Reject;\
TargetPortalGroupTag=1;MaxRecvDataSegmentLength=262144;"
        );
        let p = n.finish().unwrap();
        assert_eq!((p.max_burst_length, p.first_burst_length), (4096, 2048));
        assert!(p.header_digest);

        let mut other = Negotiator::new_non_leading(TargetLimits::default(), &session).unwrap();
        let err = run(
            &mut other,
            Stage::Security,
            b"InitiatorName=iqn.x:y\0TargetName=iqn.c:d\0",
        )
        .unwrap_err();
        assert_eq!(
            err,
            NegotiateError::BadValue {
                key: "InitiatorName"
            }
        );
    }

    #[test]
    fn transit_without_operational_stage_keeps_defaults() {
        let (n, _) = opened(b"InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0AuthMethod=None\0");
        let p = n.finish().unwrap();
        assert_eq!(p.target_max_recv_data_segment_length, 8192);
        assert_eq!(p.initiator_max_recv_data_segment_length, 8192);
        assert_eq!(p.default_time2retain, 20);
    }

    #[test]
    fn limits_are_validated_and_numbers_parsed() {
        let bad = TargetLimits {
            first_burst_length: 2_000_000,
            ..TargetLimits::default()
        };
        assert!(matches!(
            Negotiator::new_leading(bad),
            Err(NegotiateError::BadLimit {
                key: "FirstBurstLength",
                ..
            })
        ));
        let bad = TargetLimits {
            max_recv_data_segment_length: 100,
            ..TargetLimits::default()
        };
        assert!(Negotiator::new_leading(bad).is_err());
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("4294967295"), Some(u32::MAX));
        assert_eq!(parse_number("4294967296"), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("+1"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("0x"), None);
        // RFC 7143 §6.1: a decimal-constant is a single 0 or starts with 1-9; a hex-constant
        // may have leading zeros. "010" was taken as 10.
        assert_eq!(parse_number("0"), Some(0));
        assert_eq!(parse_number("010"), None);
        assert_eq!(parse_number("00"), None);
        assert_eq!(parse_number("0x0010"), Some(16));
    }

    fn pair_strategy() -> impl Strategy<Value = (String, String)> {
        let names: Vec<&'static str> = KEYS
            .iter()
            .map(|d| d.name)
            .chain(["X-a.b", "Bogus"])
            .collect();
        let values = prop_oneof![
            Just("Yes".to_owned()),
            Just("No".to_owned()),
            Just("None,CRC32C".to_owned()),
            Just("CHAP".to_owned()),
            Just("Discovery".to_owned()),
            Just("Reject".to_owned()),
            "[0-9]{1,12}",
            "0x[0-9a-f]{0,10}",
            "[ -~]{0,40}",
        ];
        (
            proptest::sample::select(names).prop_map(str::to_owned),
            values,
        )
    }

    proptest! {
        /// Arbitrary key sets in arbitrary stages never panic; whatever we answer is valid
        /// text with each key at most once.
        #[test]
        fn negotiation_never_panics(
            requests in proptest::collection::vec(
                (0u8..3, proptest::collection::btree_map("[a-z]{1}", pair_strategy(), 0..12)),
                1..5,
            ),
            leading in any::<bool>(),
        ) {
            let mut n = Negotiator::new_leading(TargetLimits::default()).unwrap();
            if !leading {
                n = Negotiator::new_non_leading(TargetLimits::default(), &rfc_defaults()).unwrap();
            }
            for (stage, pairs) in requests {
                let stage = [Stage::Security, Stage::Operational, Stage::FullFeature][usize::from(stage)];
                let mut text = String::from("InitiatorName=iqn.a:b\0TargetName=iqn.c:d\0");
                let mut names = std::collections::BTreeSet::new();
                for (key, value) in pairs.values() {
                    if names.insert(key.clone()) && key != "InitiatorName" && key != "TargetName" {
                        text.push_str(&format!("{key}={value}\0"));
                    }
                }
                let Ok(list) = TextList::parse(text.as_bytes()) else { continue };
                let mut out = OutgoingText::new(64 * 1024);
                if n.negotiate(stage, &list, &mut out).is_ok() {
                    let answered = TextList::parse(out.as_bytes());
                    prop_assert!(answered.is_ok(), "{:?}", answered);
                }
            }
            let _ = n.finish();
        }
    }
}
