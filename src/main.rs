//! The `pullsecret-injector` binary: parse arguments, set up logging and TLS, dispatch.

use std::process::ExitCode;

use clap::Parser;
use pullsecret_injector::cli::{Cli, Command};
use pullsecret_injector::commands::{Output, audit, check_config, explain};
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
            Ok(Output::default())
        }),
        Command::Controller(args) => run_async(async move {
            controller::run(args, shutdown::signal()).await?;
            Ok(Output::default())
        }),
        Command::CheckConfig(args) => match check_config::run(&args) {
            Ok(output) => finish(Ok(output)),
            Err(e) => {
                // What was checked before the problems, then the problems as one error.
                if let Some(output) = e.output() {
                    print_output(output);
                }
                finish(Err(e.into()))
            }
        },
        Command::Explain(args) => finish(explain::run(&args).map_err(Into::into)),
        Command::Audit(args) => run_async(async move {
            Ok(Output {
                report: audit::run(args).await?,
                warnings: Vec::new(),
            })
        }),
    }
}

/// One style for every command: the report on stdout, `warning: ...` lines on stderr (the
/// exit code unchanged), and an error as one `error: ...` on stderr with exit code 1.
fn finish(result: anyhow::Result<Output>) -> ExitCode {
    match result {
        Ok(output) => {
            print_output(&output);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_output(output: &Output) {
    print!("{}", output.report);
    if !output.report.is_empty() && !output.report.ends_with('\n') {
        println!();
    }
    for warning in &output.warnings {
        eprintln!("warning: {warning}");
    }
}

fn run_async(future: impl Future<Output = anyhow::Result<Output>>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => finish(runtime.block_on(future)),
        Err(e) => finish(Err(anyhow::anyhow!("cannot start the async runtime: {e}"))),
    }
}
