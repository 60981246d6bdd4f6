//! The offline and cluster-reading subcommands: `mutate`, `scan` and `certs`.

pub mod certs;
pub mod mutate;
pub mod scan;
