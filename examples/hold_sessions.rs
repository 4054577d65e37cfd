//! Opens N idle sessions to a target and holds them (answering NOP-In pings) for a while: the
//! "64 idle sessions" half of the memory figures in perf/memory.sh.
//!
//! Usage: hold_sessions PORT TARGET-IQN COUNT SECONDS

use std::time::{Duration, Instant};
use vit::iscsi::initiator::{read_pdu, try_login};
use vit::iscsi::pdu::TargetPdu;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: hold_sessions PORT TARGET-IQN COUNT SECONDS");
        std::process::exit(2)
    };
    if args.len() != 5 {
        usage();
    }
    let port: u16 = args[1].parse().unwrap_or_else(|_| usage());
    let target = args[2].clone();
    let count: u16 = args[3].parse().unwrap_or_else(|_| usage());
    let seconds: u64 = args[4].parse().unwrap_or_else(|_| usage());
    let end = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..count)
        .map(|i| {
            let target = target.clone();
            std::thread::spawn(move || {
                let isid = [0x80, 0, 0, 0x4d, (i >> 8) as u8, i as u8];
                let mut s = match try_login(port, "iqn.2026-11.io.vit:hold-sessions", &target, isid)
                {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("session {i}: {e}");
                        return false;
                    }
                };
                let _ = s.stream.set_read_timeout(Some(Duration::from_millis(500)));
                while Instant::now() < end {
                    if let Ok((TargetPdu::NopIn(n), _)) = read_pdu(&mut s.stream)
                        && n.ttt != 0xffff_ffff
                    {
                        let _ = s.answer_ping(n.ttt);
                    }
                }
                true
            })
        })
        .collect();
    let up = threads
        .into_iter()
        .filter_map(|t| t.join().ok())
        .filter(|ok| *ok)
        .count();
    println!("{up} sessions held");
}
