//! The `pullsecret-injector` binary: parse arguments, set up logging and TLS, dispatch.

use std::process::ExitCode;

use clap::Parser;
use pullsecret_injector::cli::{Cli, Command, ExplainFormat};
use pullsecret_injector::{audit, config, explain, serve, shutdown, telemetry, tls};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(cli.log_format, &cli.log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // rustls needs one process-wide crypto provider (ring) before any TLS is set up.
    tls::provider();
    match cli.command {
        Command::CheckConfig(args) => match config::load(&args.config) {
            Ok(config) => {
                println!(
                    "{}: valid ({} rules)",
                    args.config.display(),
                    config.rules.rules().len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Explain(args) => match run_explain(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => run_async(async move {
            serve::run(args, shutdown::signal)
                .await
                .map_err(anyhow::Error::from)
        }),
        Command::Audit(args) => {
            run_async(async move { audit::run(args).await.map_err(anyhow::Error::from) })
        }
    }
}

fn run_async(future: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_explain(args: &pullsecret_injector::cli::ExplainArgs) -> anyhow::Result<()> {
    let config = config::load(&args.config)?;
    let docs = explain::read_documents(&args.file)?;
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let (targets, notes) = explain::find_targets(&docs, namespace);
    let explanations: Vec<_> = targets
        .iter()
        .map(|t| explain::explain(t, &config, &config.rules))
        .collect();
    match args.output {
        ExplainFormat::Text => print!("{}", explain::render_text(&explanations, &notes)),
        ExplainFormat::Json => println!("{}", serde_json::to_string_pretty(&explanations)?),
    }
    Ok(())
}
