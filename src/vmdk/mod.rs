//! VMDK descriptors and flat extents.
