//! vitctl: manage a vit datastore.
fn main() {}
