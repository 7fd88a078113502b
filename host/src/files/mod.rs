//! Layer 2, plugin files: ELF checks, digests, staging of private copies, private
//! directories, read leases, bounded reads of regular files, the state directory and the
//! host id kept in it, and the errors of loading a file. Names only `types`.

pub(crate) mod digest;
pub(crate) mod elf;
pub(crate) mod host_id;
pub(crate) mod lease;
pub mod load_error;
pub(crate) mod owner_lock;
pub(crate) mod plugin_file;
pub(crate) mod private_dir;
pub(crate) mod regular;
pub mod state_dir;
