//! The OCI runtime backend (runc or crun). (To be written.)
