//! VMDK descriptors are untrusted: parsing any bytes must never panic; whatever parses must print
//! to text that parses back, and its extent map must tile any in-range request exactly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vit::vmdk::{Descriptor, ExtentMap, Op};

fuzz_target!(|data: &[u8]| {
    let Ok(desc) = Descriptor::parse_bytes(data) else { return };
    let again = Descriptor::parse(&desc.to_string()).expect("printed descriptor parses");
    assert_eq!(again.capacity_bytes(), desc.capacity_bytes());
    let map = ExtentMap::new(&desc);
    let cap = map.capacity();
    let len = cap.min(1 << 20);
    if let Ok(segments) = map.map(cap - len, len, Op::Read) {
        let total: u64 = segments.map(|s| s.len).sum();
        assert_eq!(total, len);
    }
});
