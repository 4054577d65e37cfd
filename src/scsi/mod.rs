//! The SCSI device server (SPC-4, SBC-3).
