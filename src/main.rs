//! The `tollgate` binary: the built-in plugins and the command line of [`tollgate::cli`]. A
//! custom binary is this file with more `register` calls (see `docs/plugins.md`).

use std::process::ExitCode;
use tollgate::prelude::*;

/// mimalloc keeps RSS flat under churn and makes the many small per-request allocations
/// cheaper than glibc's allocator (the largest user-space cost in profiles of the proxy).
#[global_allocator]
static GLOBAL: tollgate::MiMalloc = tollgate::MiMalloc;

fn main() -> ExitCode {
    tollgate::cli::main_with(Registry::builtin())
}
