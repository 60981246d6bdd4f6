//! The offline and cluster-reading subcommands: `mutate`, `scan` and `certs`. `mutate` and
//! `scan` hold no policy rule: every decision comes from the admission engine ([`engine`]).

pub mod certs;
pub mod engine;
pub mod gap;
pub mod manifest;
pub mod mutate;
pub mod scan;
