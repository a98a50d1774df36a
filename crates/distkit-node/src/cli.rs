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
            let settings = match Settings::resolve(&cli.node) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("distkit-node: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logs(settings.log_json);
            if cli.node.dev {
                // A log line, so that it is JSON with --log-format json.
                tracing::info!(
                    "dev mode: one node at http://{} that leads at once, {} locks, data in {}",
                    settings.listen,
                    if matches!(settings.locks, crate::LockBackend::InProcess) {
                        "in-process"
                    } else {
                        "Redis"
                    },
                    settings.data_dir.display()
                );
            }
            let json = settings.log_json;
            match crate::run(settings, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Said once: as a log line when logs are JSON (a shipper reads only
                    // those), else as plain text.
                    if json {
                        tracing::error!(error = %e, kind = e.kind(), "distkit-node cannot run");
                    } else {
                        eprintln!("distkit-node: {e}");
                    }
                    // A setting that cannot work is the caller's mistake, as in `resolve`.
                    if matches!(e, distkit_core::Error::InvalidInput { .. }) {
                        ExitCode::from(2)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}

/// Crates whose debug logs are connection-pool chatter, not the node's story: kept at warn
/// unless `RUST_LOG` names them.
const QUIET: [&str; 6] = [
    "hyper",
    "hyper_util",
    "reqwest",
    "h2",
    "rustls",
    "tokio_rustls",
];

/// The filter for `RUST_LOG` (default `info`), with [`QUIET`] crates at warn unless named.
fn log_filter(spec: Option<&str>) -> String {
    let mut filter = spec.unwrap_or("info").to_owned();
    for krate in QUIET {
        let named = filter
            .split(',')
            .any(|d| d.split(['=', '[', ':']).next() == Some(krate));
        if !named {
            filter.push_str(&format!(",{krate}=warn"));
        }
    }
    filter
}

/// Logs to stderr, as text (colored on a terminal) or JSON lines.
fn init_logs(json: bool) {
    let spec = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(log_filter(spec.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(log_filter(None)));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        logs.json().try_init()
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}

/// SIGTERM or SIGINT; a second one of either ends the process at once (the first starts a
/// graceful shutdown of up to 10 s).
async fn shutdown_signal() {
    signal().await;
    tokio::spawn(async {
        signal().await;
        eprintln!("distkit-node: a second signal: exiting now");
        std::process::exit(130);
    });
}

async fn signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_chatter_stays_quiet_unless_named() {
        let f = log_filter(Some("debug"));
        assert!(f.starts_with("debug,"));
        assert!(f.contains(",hyper=warn") && f.contains(",hyper_util=warn"));
        let f = log_filter(Some("debug,hyper_util=trace"));
        assert!(f.contains("hyper_util=trace") && !f.contains("hyper_util=warn"));
        assert!(f.contains(",hyper=warn"), "hyper_util does not name hyper");
        assert!(log_filter(None).starts_with("info,"));
        assert!(EnvFilter::try_new(log_filter(Some("debug"))).is_ok());
    }
}
