//! Images without containerd: reference normalisation as docker does it, the OCI/Docker
//! manifest and config formats, tarball reading (OCI layout and `docker save`) and a
//! registry v2 client. The containerd module stores what these produce.

pub mod oci;
pub mod reference;
pub mod registry;
pub mod tarball;

pub use reference::Reference;
