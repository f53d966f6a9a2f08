use clap::Parser;
use spendguard::cli::{self, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    spendguard::telemetry::init(&cli.log);
    match cli::run(cli) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            // Error text can quote input; it is masked like every log line (SPEC §14).
            eprintln!(
                "error: {}",
                spendguard::privacy::mask_pans(&format!("{e:#}"))
            );
            std::process::ExitCode::from(1)
        }
    }
}
