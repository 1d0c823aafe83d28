//! The `pullsecret-injector` binary: parse arguments, set up logging and TLS, dispatch.

use std::process::ExitCode;

use clap::Parser;
use pullsecret_injector::cli::{Cli, Command};
use pullsecret_injector::commands::{audit, check_config, explain};
use pullsecret_injector::{controller, shutdown, telemetry, webhook};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(cli.log_format, &cli.log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // rustls needs one process-wide crypto provider (ring) before any TLS is set up.
    webhook::tls::provider();
    match cli.command {
        Command::Serve(args) => run_async(async move {
            webhook::run(args, shutdown::signal).await?;
            Ok(String::new())
        }),
        Command::Controller(args) => run_async(async move {
            controller::run(args, shutdown::signal()).await?;
            Ok(String::new())
        }),
        Command::CheckConfig(args) => match check_config::run(&args) {
            Ok(report) => finish(Ok(report)),
            // The error is the report itself: one line per problem, no "error:" prefix.
            Err(report) => {
                eprintln!("{report}");
                ExitCode::FAILURE
            }
        },
        Command::Explain(args) => finish(explain::run(&args).map_err(Into::into)),
        Command::Audit(args) => run_async(async move { Ok(audit::run(args).await?) }),
    }
}

/// Prints a command's output, or its error, and turns it into the exit code.
fn finish(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(output) => {
            print!("{output}");
            if !output.is_empty() && !output.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(future: impl Future<Output = anyhow::Result<String>>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => finish(runtime.block_on(future)),
        Err(e) => finish(Err(anyhow::anyhow!("cannot start the async runtime: {e}"))),
    }
}
