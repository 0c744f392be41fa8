//! The `geats` binary: picks the transport from argv[0] and argv[1], sets up
//! logging on stderr, and turns the outcome into the process exit code.
//! The agent path is parsed by hand to keep clap off the per-request cost.

use std::process::ExitCode;

use clap::Parser;

fn init_logging(default: tracing::Level, verbose: u8, quiet: bool) {
    let level = match std::env::var("GEATS_LOG").ok().as_deref() {
        Some("error") => tracing::Level::ERROR,
        Some("warn") => tracing::Level::WARN,
        Some("info") => tracing::Level::INFO,
        Some("debug") => tracing::Level::DEBUG,
        Some("trace") => tracing::Level::TRACE,
        _ if quiet => tracing::Level::ERROR,
        _ => match verbose {
            0 => default,
            1 => tracing::Level::INFO,
            2 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        },
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .without_time()
        .try_init();
}

fn main() -> ExitCode {
    // Whatever umask the caller left, nothing geats creates is writable by
    // others (issue 11).
    geats::sys::proc::restrict_umask();
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let argv0 = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
    let verbose = args.iter().filter(|a| a.as_str() == "-v" || a.as_str() == "--verbose").count() as u8;
    let quiet = args.iter().any(|a| a == "-q" || a == "--quiet");

    // `geats_jsonagent` is the name the Vagoth GeatsLocal driver runs.
    if argv0 == "geats_jsonagent" {
        init_logging(tracing::Level::WARN, verbose, quiet);
        let a = geats::agent::AgentArgs { stdio: true, ..Default::default() };
        return ExitCode::from(geats::agent::run(&a));
    }
    // `geats [--config P] agent ...`: everything after the first word that
    // is not an option (or an option's value) goes to the agent parser.
    let mut i = 1;
    let mut config = None;
    while i < args.len() && args[i].starts_with('-') {
        if args[i] == "--config" {
            config = args.get(i + 1).cloned();
            i += 1;
        } else if let Some(p) = args[i].strip_prefix("--config=") {
            config = Some(p.to_string());
        }
        i += 1;
    }
    // MCollective's implemented_by runs `COMMAND REQUEST_FILE REPLY_FILE` and
    // Choria `COMMAND REQUEST_FILE REPLY_FILE PROTOCOL` (one path, no room for
    // the `agent` word), naming the request file in the environment too.
    let mco_direct = args.get(i).is_some_and(|a| {
        ["MCOLLECTIVE_REQUEST_FILE", "CHORIA_EXTERNAL_REQUEST"].iter().any(|k| std::env::var(k).is_ok_and(|r| &r == a))
    });
    if mco_direct || args.get(i).map(String::as_str) == Some("agent") {
        init_logging(tracing::Level::WARN, verbose, quiet);
        let mut a = match geats::agent::AgentArgs::parse(&args[i + usize::from(!mco_direct)..]) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("geats agent: {e}\n{}", geats::agent::USAGE);
                return ExitCode::from(geats::error::ExitClass::Other.code());
            }
        };
        if a.help {
            // Asked-for help is output, like `geats --help`: stdout, exit 0.
            geats::cli::print_text(&format!("{}\n", geats::agent::USAGE));
            return ExitCode::SUCCESS;
        }
        if a.config.is_none() {
            a.config = config.map(Into::into);
        }
        return ExitCode::from(geats::agent::run(&a));
    }
    let cli = geats::cli::Cli::parse();
    init_logging(tracing::Level::WARN, cli.verbose, cli.quiet);
    ExitCode::from(geats::cli::run(cli))
}
