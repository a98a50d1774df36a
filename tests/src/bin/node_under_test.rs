//! The `distkit-node` command line, built inside the tests package so the multi-process
//! tests can find it through `CARGO_BIN_EXE_node-under-test`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    distkit_node::cli_main(distkit_node::Cli::parse()).await
}
