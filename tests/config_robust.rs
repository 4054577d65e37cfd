//! Untrusted input: parsing and verifying never panic, and whatever loads prints back to itself.

use proptest::prelude::*;
use vit::config;

/// Pieces of vit.conf, valid and not, joined into token soup.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "target",
            "lun",
            "auth-group",
            "portal-group",
            "initiator-group",
            "initiator",
            "alias",
            "auth-type",
            "chap",
            "chap-mutual",
            "none",
            "chap",
            "deny",
            "listen",
            "backend",
            "vmdk",
            "path",
            "size",
            "option",
            "uuid",
            "lun-alias",
            "blocksize",
            "512",
            "4096",
            "generation",
            "tag",
            "pcp",
            "foreign",
            "{",
            "}",
            ";",
            "\"",
            "#",
            "\n",
            " ",
            "\u{a0}",
            "\t",
            "\r",
            "default",
            "iqn.2000-01.com.x:t",
            "eui.0123456789abcdef",
            "vmk0:3260",
            "[::1]:3260",
            "0",
            "255",
            "256",
            "18446744073709551616",
            "6G",
            "1B",
            "a/../b",
            "/abs",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,6}",
        any::<char>().prop_map(String::from),
    ]
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..60).prop_map(|v| v.join(" "))
}

/// If `text` loads, its canonical print loads to the same model and prints identically.
fn check(text: &str) -> Result<(), TestCaseError> {
    if let Ok(cfg) = config::load(text, "in") {
        let printed = config::print(&cfg);
        let again = config::load(&printed, "printed");
        prop_assert_eq!(again.as_ref(), Ok(&cfg), "printed:\n{}", printed);
        prop_assert_eq!(config::print(&cfg), printed);
    } else if let Ok(cfg) = config::parse(text, "in") {
        // Parsed but invalid: the verifier must still report positioned errors without panicking.
        prop_assert!(!config::verify(&cfg, "in").is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn token_soup_never_panics(text in soup()) {
        check(&text)?;
    }
}

#[test]
fn sample_mutations_never_panic() {
    let sample = include_str!("data/vit.conf.sample");
    let chars: Vec<char> = sample.chars().collect();
    // Cut the sample at every character: each prefix either loads or reports an error.
    for end in 0..=chars.len() {
        let prefix: String = chars.iter().take(end).collect();
        let result = config::load(&prefix, "cut");
        if end == chars.len() {
            assert!(result.is_ok(), "the whole sample must load: {result:?}");
        }
    }
}
