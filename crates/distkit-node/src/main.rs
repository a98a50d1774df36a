//! `distkit-node`: run a node, or the demo. `distkit-node --help` explains every option.

use std::process::ExitCode;

use clap::Parser;
use distkit_node::{Cli, Command, Settings};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo { devices }) => match distkit_node::demo::run(devices).await {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("demo: some checks failed (see the summary)");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("demo: {e}");
                ExitCode::FAILURE
            }
        },
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let settings = match Settings::resolve(&cli.node) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("distkit-node: {e}");
                    return ExitCode::from(2);
                }
            };
            match distkit_node::run(settings, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "node stopped");
                    eprintln!("distkit-node: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
