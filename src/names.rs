//! iSCSI names: IQN, EUI and NAA (RFC 7143 section 4.2.7).
//!
//! Accepted forms (type prefixes are case-insensitive, as in ctld):
//! - `iqn.YYYY-MM.reversed.domain[:anything]`: month 01..12, domain labels of letters, digits
//!   and `-`; after the `:` letters, digits, `-`, `.` and `:`.
//! - `eui.` and 16 hex digits; `naa.` and 16 or 32 hex digits.
//!
//! At most 223 bytes. Only ASCII is accepted: RFC 7143 allows other Unicode after stringprep
//! normalization, which vit does not implement.

/// The longest iSCSI name, in bytes (RFC 7143 section 4.2.7.1).
pub const MAX_ISCSI_NAME_LEN: usize = 223;

/// The naming authority vit uses for names it generates.
const VIT_IQN_PREFIX: &str = "iqn.2026-11.io.vit:";

/// Checks `s` is a valid iSCSI name; the error says what is wrong.
pub fn validate_iscsi_name(s: &str) -> Result<(), String> {
    if s.len() > MAX_ISCSI_NAME_LEN {
        return Err(format!(
            "iSCSI name is {} bytes long, more than {MAX_ISCSI_NAME_LEN}",
            s.len()
        ));
    }
    let (prefix, rest) = match (s.get(..4), s.get(4..)) {
        (Some(p), Some(r)) => (p.to_ascii_lowercase(), r),
        _ => {
            return Err(format!(
                "\"{s}\" is not an iSCSI name: expected iqn., eui. or naa."
            ));
        }
    };
    match prefix.as_str() {
        "iqn." => validate_iqn(rest),
        "eui." => validate_hex("eui.", rest, &[16]),
        "naa." => validate_hex("naa.", rest, &[16, 32]),
        _ => Err(format!(
            "\"{s}\" is not an iSCSI name: expected iqn., eui. or naa."
        )),
    }
}

/// Checks the part of an IQN after `iqn.`: `YYYY-MM.domain[:rest]`.
fn validate_iqn(rest: &str) -> Result<(), String> {
    if let Some(c) = rest
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':')))
    {
        return Err(format!("invalid character '{}' in IQN", c.escape_debug()));
    }
    let b = rest.as_bytes();
    let date_ok = b.len() >= 8
        && b.iter().take(4).all(u8::is_ascii_digit)
        && b.get(4) == Some(&b'-')
        && b.iter().skip(5).take(2).all(u8::is_ascii_digit)
        && b.get(7) == Some(&b'.');
    if !date_ok {
        return Err(
            "IQN must start with iqn.YYYY-MM. (a year and month, then the naming authority)"
                .to_string(),
        );
    }
    let month = rest
        .get(5..7)
        .and_then(|m| m.parse::<u8>().ok())
        .unwrap_or(0);
    if !(1..=12).contains(&month) {
        return Err(format!("IQN date has month {:02}, expected 01..12", month));
    }
    let after_date = rest.get(8..).unwrap_or("");
    let domain = after_date.split_once(':').map_or(after_date, |(d, _)| d);
    if domain.is_empty() {
        return Err(
            "IQN has no naming authority (reversed domain name) after the date".to_string(),
        );
    }
    if domain.split('.').any(|label| {
        label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    }) {
        return Err(format!(
            "IQN naming authority \"{domain}\" is not a reversed domain name"
        ));
    }
    Ok(())
}

/// Checks `rest` is a hex string of one of `lens` digits, for the `kind` prefix.
fn validate_hex(kind: &str, rest: &str, lens: &[usize]) -> Result<(), String> {
    if let Some(c) = rest.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid character '{}' in {kind} name: expected hex digits",
            c.escape_debug()
        ));
    }
    if !lens.contains(&rest.len()) {
        let want: Vec<String> = lens.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{kind} name has {} hex digits, expected {}",
            rest.len(),
            want.join(" or ")
        ));
    }
    Ok(())
}

/// A vit IQN for `suffix`: `iqn.2026-11.io.vit:<suffix>`, lowercased. Characters an IQN cannot
/// hold become `-` and the result is cut to 223 bytes, so the name always validates.
pub fn generate_iqn(suffix: &str) -> String {
    let mut name = String::from(VIT_IQN_PREFIX);
    for c in suffix.chars().map(|c| c.to_ascii_lowercase()) {
        if name.len() >= MAX_ISCSI_NAME_LEN {
            break;
        }
        let c = if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':') {
            c
        } else {
            '-'
        };
        name.push(c);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in [
            "iqn.1991-05.com.microsoft:win-53ggkq348ci",
            "iqn.1998-01.com.vmware:a985217e-de62-a4e7-671a-5f5c5b9b2e35",
            "iqn.2026-11.io.vit",
            "IQN.2001-04.com.example:storage:disk2.sys1.xyz",
            "eui.02004567A425678D",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ] {
            assert_eq!(validate_iscsi_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_with_reason() {
        let cases = [
            ("", "expected iqn."),
            ("foo.bar", "expected iqn."),
            ("iqn.1991-5.com.x", "iqn.YYYY-MM."),
            ("iqn.1991-13.com.x", "month 13"),
            ("iqn.1991-00.com.x", "month 00"),
            ("iqn.1991-05.", "no naming authority"),
            ("iqn.1991-05.:x", "no naming authority"),
            ("iqn.1991-05.com..x", "not a reversed domain"),
            ("iqn.1991-05.com.x:a b", "invalid character ' '"),
            ("iqn.1991-05.com.x:é", "invalid character 'é'"),
            ("eui.0200456", "7 hex digits, expected 16"),
            ("eui.02004567A425678G", "invalid character 'G'"),
            ("naa.0123456789abcdef01", "expected 16 or 32"),
        ];
        for (n, want) in cases {
            let e = validate_iscsi_name(n).unwrap_err();
            assert!(e.contains(want), "{n}: {e}");
        }
    }

    #[test]
    fn length_limit_is_223_bytes() {
        let base = "iqn.2000-01.com.x:";
        let ok = format!("{base}{}", "a".repeat(MAX_ISCSI_NAME_LEN - base.len()));
        assert_eq!(validate_iscsi_name(&ok), Ok(()));
        let long = format!("{ok}a");
        assert!(
            validate_iscsi_name(&long)
                .unwrap_err()
                .contains("224 bytes")
        );
    }

    #[test]
    fn multibyte_input_never_panics() {
        assert!(validate_iscsi_name("iqé").is_err());
        assert!(validate_iscsi_name("iqn.é").is_err());
        assert!(validate_iscsi_name("iqn.2000-0é.x").is_err());
    }

    #[test]
    fn generated_names_are_lowercase_and_valid() {
        assert_eq!(generate_iqn("Target-1"), "iqn.2026-11.io.vit:target-1");
        for s in [
            "",
            "A B/é",
            &"x".repeat(400),
            "89fb055d-dc24-d742-9a22-0050568e1413",
        ] {
            let n = generate_iqn(s);
            assert_eq!(validate_iscsi_name(&n), Ok(()), "{n}");
            assert!(n.starts_with(VIT_IQN_PREFIX));
        }
        assert_eq!(generate_iqn(&"x".repeat(400)).len(), MAX_ISCSI_NAME_LEN);
    }
}
