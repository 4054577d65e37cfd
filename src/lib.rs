//! vit: a vSAN-style iSCSI target service.
//!
//! The crate is layered (see ARCHITECTURE.md):
//! - [`config`]: the vit.conf model, parser, verifier and printer (pure text code).
//! - [`names`]: iSCSI names (IQN, EUI, NAA): validation and generation.
//! - [`vmdk`]: VMDK descriptors, the extent map, creating and growing flat LUNs.
//! - [`datastore`]: the on-disk layout of a datastore, safe path resolution, atomic config updates.
//! - [`iscsi`]: the iSCSI transport: PDU codec, login keys, CHAP, digests.
//! - [`scsi`]: the SCSI device server: CDB decode, sense data, command execution.
//! - [`fsutil`]: the one crash-safe file writer.
//! - [`ctl`]: the operations behind `vitctl`.
//! - [`daemon`]: `vitd`: the control thread and the io_uring data threads.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod ctl;
pub mod daemon;
pub mod datastore;
pub mod fsutil;
pub mod iscsi;
pub mod names;
pub mod scsi;
pub mod vmdk;
