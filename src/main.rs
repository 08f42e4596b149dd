//! The `presenced` binary: configuration, logging, signals; the rest is
//! `presenced::serve`.

use presenced::config::{self, LogFormat};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match presenced::Config::load() {
        Ok(config) => config,
        // --help and --version land here too, and exit 0.
        Err(config::Error::Args(err)) => err.exit(),
        Err(err) => {
            eprintln!("presenced: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    if config.check_config {
        print!("{}", config.describe());
        return std::process::ExitCode::SUCCESS;
    }
    // Validated by Config::load.
    let filter = EnvFilter::new(&config.observability.log_filter);
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match config.observability.log_format {
        LogFormat::Json => logs.json().with_current_span(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(addr = %config.listen, %err, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let app = tokio::select! {
        app = presenced::App::new(config) => app,
        () = shutdown_signal() => return std::process::ExitCode::SUCCESS,
    };
    match app {
        Ok(app) => match app.serve(listener, shutdown_signal()).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(%err, "presenced stopped");
                exit_code(&err)
            }
        },
        Err(err) => {
            tracing::error!(%err, "presenced cannot start");
            exit_code(&err)
        }
    }
}

/// 2 for a configuration that cannot work (as for `--check-config`), 1 for
/// anything else.
fn exit_code(err: &presenced::server::Error) -> std::process::ExitCode {
    std::process::ExitCode::from(if err.is_config() { 2 } else { 1 })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
