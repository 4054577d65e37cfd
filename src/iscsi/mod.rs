//! The iSCSI transport (RFC 7143).
