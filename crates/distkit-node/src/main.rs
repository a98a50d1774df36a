//! `distkit-node`: run a node, or the demo. `distkit-node --help` explains every option.

use std::process::ExitCode;

use clap::Parser;
use distkit_node::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    distkit_node::cli_main(Cli::parse()).await
}
