//! The commands the gateway sends the cluster engine and the completions it gets back. Plain
//! data, defined in the core (`diminuendo_core::cluster`, which emits and consumes them) and
//! re-exported here, as the storage crate re-exports the storage types: every command that
//! carries a `token` is answered exactly once with a completion carrying the same token.

pub use diminuendo_core::cluster::types::*;
