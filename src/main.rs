//! Parse the command line, run it, map the outcome to an exit code. Nothing else.

use clap::Parser;
use image_cache::cli::{self, Cli, Command};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Serve(arg) => cli::serve(arg).await.map(|()| 0),
        Command::CheckConfig(arg) => cli::check_config(arg).map(|()| 0),
        Command::Sync { config, dry_run } => cli::sync(config, *dry_run).await,
        Command::ContainerdHosts {
            mirror,
            mirrors_from,
            registry,
            write,
            every,
        } => cli::containerd_hosts(cli::HostsArgs {
            mirror,
            mirrors_from: mirrors_from.as_deref(),
            registry: registry.as_deref(),
            write: write.as_deref(),
            every: *every,
        })
        .await
        .map(|()| 0),
        Command::Store { config, action } => cli::store(config, action).await,
        Command::Registry {
            config,
            action: cli::RegistryAction::Prefetch { images },
        } => cli::prefetch(config, images).await,
    };
    match outcome {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("image-cache: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
