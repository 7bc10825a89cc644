//! Storage commands the core emits and the completions it consumes (see the storage crate).
