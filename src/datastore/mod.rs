//! The datastore layout.
