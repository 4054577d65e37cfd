//! vit.conf: FreeBSD ctl.conf(5) syntax with VMware's additions.
pub mod model;
pub use model::*;
