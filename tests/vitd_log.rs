//! What vitd writes to its log, read from an operator's seat: the start (version, what is
//! served, where, with what limits), one line per session at its login and one at its end
//! saying why, none per command, failed logins naming who, from where, to what and why, the
//! stop; and never a CHAP secret or response, whatever the level.

mod common;
use common::*;
use std::time::Duration;
use vit::iscsi::initiator::login;

const RC16: &str = "iscsi-readcapacity16";

/// The lines of `log` holding every one of `parts`.
fn lines_with<'a>(log: &'a str, parts: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect()
}

/// Waits (up to 10 s) for a line holding every one of `parts`.
fn wait_for_line(vitd: &Vitd, parts: &[&str]) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if !lines_with(&vitd.log_text(), parts).is_empty() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The longest run of hexadecimal digits in `s` (a CHAP challenge or response is 32 or more).
fn longest_hex_run(s: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for c in s.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// CHAP and mutual CHAP logins, good and bad, with vitd at RUST_LOG=trace: no secret, and no
/// CHAP challenge or response (material for an offline attack on the secret), reaches the log
/// at any level; the failures are logged naming the initiator, its address, the target and
/// the reason, a mutual secret the initiator refuses included (the initiator just closes the
/// connection: vitd said nothing of it before).
#[test]
fn chap_logins_log_who_and_why_but_never_a_secret_even_at_trace() {
    if !have(RC16) {
        return;
    }
    let ds = Datastore::new();
    ds.target(
        "c",
        &[
            "--auth-type",
            "chap",
            "--chap-user",
            "alice",
            "--chap-secret",
            "alicesecret12",
        ],
    );
    ds.lun("c", 0, "8M");
    ds.target(
        "m",
        &[
            "--auth-type",
            "chap-mutual",
            "--chap-user",
            "bob",
            "--chap-secret",
            "bobsecret1234",
            "--mutual-user",
            "tgt",
            "--mutual-secret",
            "tgtsecret1234",
        ],
    );
    ds.lun("m", 0, "8M");
    let mut cmd = Vitd::command(ds.root(), &[]);
    cmd.env("RUST_LOG", "trace");
    let mut vitd = Vitd::spawn(cmd, ds.port);
    let url = |user: &str, secret: &str, alias: &str, extra: &str| {
        format!(
            "iscsi://{user}%{secret}@127.0.0.1:{}/{}/0{extra}",
            ds.port,
            iqn(alias)
        )
    };
    let mutual = |expect: &str| format!("?target_user=tgt&target_password={expect}");
    let runs = [
        (url("alice", "alicesecret12", "c", ""), true),
        (url("alice", "wrongsecret1", "c", ""), false),
        (
            url("bob", "bobsecret1234", "m", &mutual("tgtsecret1234")),
            true,
        ),
        (
            url("bob", "bobsecret1234", "m", &mutual("notthesecret")),
            false,
        ),
    ];
    for (u, good) in &runs {
        let (ok, out) = client(RC16, &[u]);
        assert_eq!(ok, *good, "{u}: {out}");
    }
    assert!(
        wait_for_line(&vitd, &["mutual CHAP", &iqn("m")]),
        "the refused mutual CHAP response is logged: {}",
        vitd.log_text()
    );
    assert!(vitd.stop().success());
    let log = vitd.log_text();
    // The level took: debug lines are there.
    assert!(log.contains("DEBUG"), "{log}");
    for secret in [
        "alicesecret12",
        "wrongsecret1",
        "bobsecret1234",
        "tgtsecret1234",
        "notthesecret",
    ] {
        assert!(!log.contains(secret), "{secret} in the log: {log}");
    }
    for key in ["CHAP_R=", "CHAP_C=", "CHAP_I="] {
        assert!(!log.contains(key), "{key} in the log: {log}");
    }
    assert!(
        longest_hex_run(&log) < 32,
        "a CHAP challenge or response in the log: {log}"
    );
    // Who, from where, to what, why.
    let refused = lines_with(
        &log,
        &[
            "WARN",
            "refused",
            "libiscsi",
            "from 127.0.0.1:",
            &iqn("c"),
            "authentication failure",
            "alice",
        ],
    );
    assert_eq!(refused.len(), 1, "{log}");
    let abandoned = lines_with(&log, &["WARN", "libiscsi", "from 127.0.0.1:", &iqn("m")]);
    assert!(
        abandoned.len() == 1 && abandoned[0].contains("mutual CHAP user and secret"),
        "{log}"
    );
}
