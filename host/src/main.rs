//! The `weir` binary; the command line lives in [`weir::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(weir::cli::run(std::env::args_os()))
}
