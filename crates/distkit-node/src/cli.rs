//! The command line: what `main` does, callable from other binaries (the multi-process tests
//! build one).

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::{Cli, Command, Settings};

/// Runs what `cli` asks for: the demo, or a node until SIGTERM or SIGINT.
pub async fn cli_main(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Demo { devices }) => match crate::demo::run(devices).await {
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
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init();
            let settings = match Settings::resolve(&cli.node) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("distkit-node: {e}");
                    return ExitCode::from(2);
                }
            };
            match crate::run(settings, shutdown_signal()).await {
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
