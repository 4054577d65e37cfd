//! vit.conf is untrusted: parsing and verifying any bytes must never panic, and whatever parses
//! must print to text that parses back to the same model.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = vit::config::parse(text, "fuzz.conf") {
        let _ = vit::config::verify(&cfg, "fuzz.conf");
        if vit::config::verify(&cfg, "fuzz.conf").is_empty() {
            let printed = vit::config::print(&cfg);
            let again = vit::config::parse(&printed, "printed.conf").expect("printed config parses");
            assert_eq!(again, cfg, "round trip changed the model");
        }
    }
});
