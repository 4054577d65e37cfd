//! The SCSI device server (SPC-4, SBC-3) for direct-access logical units.
//!
//! It knows nothing of iSCSI and nothing of the storage. The transport hands over a CDB, the
//! LUN field and the I_T nexus state; [`lun::execute`] decodes and validates the CDB
//! ([`opcodes`], [`cdb`]), runs every non-media command itself and turns media commands into a
//! range-checked [`lun::IoRequest`] that the caller performs on the backing store and then
//! reports back through [`lun::complete_io`]. SCSI failures are CHECK CONDITION status with
//! sense data ([`sense`]), never Rust errors.

pub mod cdb;
pub mod datain;
pub mod inquiry;
pub mod lun;
pub mod mode;
pub mod opcodes;
pub mod report;
pub mod sense;
pub mod ua;

#[cfg(test)]
mod tests;
