//! The SCSI device server (SPC-4, SBC-3) for direct-access logical units.
//!
//! It knows nothing of iSCSI and nothing of the storage. The transport hands over a CDB, the
//! 8-byte LUN field and the I_T nexus state; [`execute`] decodes and validates the CDB
//! ([`opcodes`] holds the one table of supported commands and their allowed CDB bits, [`cdb`]
//! turns a CDB into a typed [`Command`]), runs every non-media command itself and turns media
//! commands into a range-checked [`IoRequest`] that the caller performs on the backing store
//! and finishes with [`complete_io`]. SCSI failures are CHECK CONDITION status with sense data
//! ([`sense`]), never Rust errors; only a bad LUN definition is an `Err`.
//!
//! ```
//! use vit::scsi::{DeviceServer, IoResult, LunInfo, Nexus, Outcome, Request, TargetPort};
//! use vit::scsi::{complete_io, encode_lun, execute};
//!
//! let server = DeviceServer::new(vec![LunInfo::new(0, 512, 2048, 0x42, "SN0")]).unwrap();
//! let port = TargetPort {
//!     target_name: "iqn.2026-01.com.example:t".into(),
//!     portal_group_tag: 1,
//!     relative_port_id: 1,
//!     target_ports: 1,
//! };
//! let mut nexus = Nexus::without_attention(port);
//! let read10 = [0x28, 0, 0, 0, 0, 8, 0, 0, 4, 0];
//! let req = Request { lun: encode_lun(0), cdb: &read10, data_out: &[] };
//! let mut data_in = vec![0u8; 4 * 512];
//! match execute(&server, &mut nexus, &req, &mut data_in) {
//!     Outcome::Io(io) => {
//!         assert_eq!((io.byte_offset, io.byte_len), (8 * 512, 4 * 512));
//!         // ... read io.byte_len bytes at io.byte_offset into data_in ...
//!         let done = complete_io(&io, IoResult::Ok);
//!         assert_eq!(done.data_len, 2048);
//!     }
//!     Outcome::Done(c) => panic!("unexpected {c:?}"),
//! }
//! ```

pub mod cdb;
pub mod datain;
pub mod inquiry;
pub mod lun;
pub mod mode;
pub mod opcodes;
pub mod pr;
pub mod report;
pub mod sbc;
pub mod sense;
pub mod ua;
pub mod xcopy;

pub use cdb::{Blocks, Command, Lba};
pub use lun::{
    Completion, DeviceServer, IoKind, IoRequest, IoResult, LunConfigError, LunInfo, Nexus, Outcome,
    Provisioning, Request, Status, TargetPort, block_io, complete_io, decode_lun, encode_lun,
    execute, execute_with_pr, first_mismatch, needs_pr_state,
};
pub use pr::{ItNexusId, PrEffects, PrState};
pub use sense::{Sense, SenseData, SenseFormat, SenseReason};

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_sbc;
