//! A custom tollgate binary: the built-in plugins plus `hmac_signature`, with the whole
//! `tollgate` command line (`run`, `check`, `run --upgrade`, `hash-password`).

use std::process::ExitCode;
use tollgate::prelude::*;

#[global_allocator]
static GLOBAL: tollgate::MiMalloc = tollgate::MiMalloc;

fn main() -> ExitCode {
    let mut registry = Registry::builtin();
    registry.register(
        tollgate_example_custom_plugin::NAME,
        tollgate_example_custom_plugin::build,
    );
    tollgate::cli::main_with(registry)
}
