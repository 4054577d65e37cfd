//! vitd: the iSCSI target daemon (being built: see issue "vitd").
fn main() {
    eprintln!("vitd: the target daemon is not built yet");
    std::process::exit(2);
}
