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
    let _ = tracing::subscriber::set_global_default(Stderr::new(level));
}

/// The subscriber geats installs: it filters by level itself and builds
/// the formatting subscriber (`tracing_subscriber::fmt`, lines on stderr)
/// only when the first event passes the filter. Most requests log
/// nothing, and building that subscriber's span registry (a sharded slab)
/// cost every request ~50K instructions and ~30 page faults (issue 15).
struct Stderr {
    level: tracing::level_filters::LevelFilter,
    fmt: std::sync::OnceLock<Box<dyn tracing::Subscriber + Send + Sync>>,
}

impl Stderr {
    fn new(level: tracing::Level) -> Stderr {
        Stderr { level: level.into(), fmt: std::sync::OnceLock::new() }
    }

    fn fmt(&self) -> &(dyn tracing::Subscriber + Send + Sync) {
        let level = self.level;
        self.fmt
            .get_or_init(|| Box::new(tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_target(false).without_time().finish()))
            .as_ref()
    }
}

impl tracing::Subscriber for Stderr {
    fn register_callsite(&self, m: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if self.enabled(m) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(self.level)
    }

    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        self.level >= *m.level()
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.fmt().new_span(span)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.fmt().record(span, values)
    }

    fn record_follows_from(&self, span: &tracing::span::Id, follows: &tracing::span::Id) {
        self.fmt().record_follows_from(span, follows)
    }

    fn event(&self, event: &tracing::Event<'_>) {
        self.fmt().event(event)
    }

    fn enter(&self, span: &tracing::span::Id) {
        self.fmt().enter(span)
    }

    fn exit(&self, span: &tracing::span::Id) {
        self.fmt().exit(span)
    }

    fn clone_span(&self, span: &tracing::span::Id) -> tracing::span::Id {
        self.fmt().clone_span(span)
    }

    fn try_close(&self, span: tracing::span::Id) -> bool {
        self.fmt().try_close(span)
    }
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
    let cli = geats::cli::Cli::parse_list(&args[1..]).unwrap_or_else(geats::cli::Cli::parse);
    init_logging(tracing::Level::WARN, cli.verbose, cli.quiet);
    ExitCode::from(geats::cli::run(cli))
}

#[cfg(test)]
mod tests {
    use super::Stderr;

    /// Nothing is built for events below the level; the first one that
    /// passes builds the formatter, and spans work through it.
    #[test]
    fn the_formatter_is_built_at_the_first_event_that_passes() {
        let sub = std::sync::Arc::new(Stderr::new(tracing::Level::WARN));
        let dispatch = tracing::Dispatch::from(sub.clone());
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::debug!("not shown");
            tracing::info!(vm = "a", "not shown either");
            assert!(sub.fmt.get().is_none(), "built for an event below the level");
            let span = tracing::warn_span!("request", action = "info");
            let _in = span.enter();
            tracing::warn!("shown on stderr");
        });
        assert!(sub.fmt.get().is_some(), "not built for a warning");
    }
}
