//! The offline and cluster-reading subcommands: `mutate`, `scan` and `certs`.

pub mod certs;
pub mod engine;
pub mod gap;
pub mod manifest;
pub mod mutate;
pub mod scan;
