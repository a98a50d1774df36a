//! The command line: what `main` does, callable from other binaries (the multi-process tests
//! build one).

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::{Cli, Command, Settings};

/// What `distkit-node` says when run with no arguments at all, instead of starting a node
/// and creating a data directory in whatever directory it was run from.
const WHAT_TO_DO: &str = "\
distkit-node runs one node of a distkit cluster. Try one of:

  distkit-node --dev                  one node that leads at once, on 127.0.0.1:7001, with
                                      in-process locks and data in a temporary directory
  distkit-node --config node-1.toml   a cluster member (docs/guide.md shows the file)
  distkit-node demo                   a 3-node cluster on loopback playing the IoT scenario
  distkit-node --help                 every flag, with its environment variable

Settings come from defaults, then --config, then DISTKIT_* variables, then flags.
";

/// Runs what `cli` asks for: the demo, or a node until SIGTERM or SIGINT. Run with no
/// arguments and no `DISTKIT_*` variable, it says what to do and exits with 2.
pub async fn cli_main(cli: Cli) -> ExitCode {
    let bare = std::env::args_os().len() <= 1
        && !std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("DISTKIT_"));
    if bare {
        eprint!("{WHAT_TO_DO}");
        return ExitCode::from(2);
    }
    match cli.command {
        Some(Command::Certs { dir, sans, nodes }) => {
            match crate::generate_certs(&dir, &nodes, &sans) {
                Ok(files) => {
                    for f in files {
                        println!("{}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("distkit-node certs: {e}");
                    ExitCode::from(2)
                }
            }
        }
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
            if cli.node.dev {
                eprintln!(
                    "distkit-node: dev mode: one node at http://{} that leads at once, {} locks, data in {}",
                    settings.listen,
                    if matches!(settings.locks, crate::LockBackend::InProcess) {
                        "in-process"
                    } else {
                        "Redis"
                    },
                    settings.data_dir.display()
                );
            }
            match crate::run(settings, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Said once, on stderr (the log already went there).
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
