//! The `switchyard` command.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use switchyard::limits::Limits;
use switchyard::plugin_test::{self, TestOptions};

/// Switchyard: a WebAssembly-plugin event router for Kafka.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on this machine, no services to set up: a Kafka-protocol
    /// broker (Tansu, in memory; installed on first use, started on a local
    /// port, stopped on exit), the config's SQLite database, its plugins
    /// with hot reload, and the admin server. Prints the addresses and an
    /// example to send a seed event.
    #[command(after_help = "Examples:
  switchyard dev
  switchyard dev --broker-port 19092 --admin 127.0.0.1:0
  switchyard dev --brokers 127.0.0.1:9092          # a broker you run yourself
  switchyard dev --database postgres://postgres@127.0.0.1/switchyard")]
    Dev(DevArgs),
    /// Run the router: consume the config's topics, hand events to the
    /// plugins, commit their effects exactly once, produce their messages.
    ///
    /// Stops gracefully on SIGINT or SIGTERM: stops fetching, finishes the
    /// events in hand, flushes the outbox, commits offsets, exits 0.
    #[command(after_help = "Examples:
  switchyard run --config config/switchyard.toml
  switchyard run --config config/switchyard.toml --brokers 127.0.0.1:9092 \\
      --database postgres://postgres@127.0.0.1/switchyard
  SWITCHYARD_LOG=debug switchyard run --config config/switchyard.toml")]
    Run(RunArgs),
    /// Check a routing config and its plugins without starting: parses the
    /// config (file, line and reason on error) and loads every plugin.
    #[command(after_help = "Example:
  switchyard check --config config/switchyard.toml")]
    Check(RunArgs),
    /// Which routes and plugins an event would reach, and why, without
    /// running anything; with warnings about routes that overlap or can
    /// never take effect and plugins no route reaches.
    #[command(after_help = "Examples:
  switchyard explain --event plugins/stats-increment/examples/user-created.json
  switchyard explain --topic user.registered.v1 --header event-id=evt-1 --header event-type=user_registered
  switchyard explain --topic create-user --json")]
    Explain(ExplainArgs),
    /// Inspect the dead-letter topic and put events back after a fix.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Produce one message to Kafka: the value from standard input, or a
    /// whole event file (the `plugin test` format, with its topic, key and
    /// headers).
    #[command(after_help = "Examples:
  switchyard produce --event plugins/welcome-notification/examples/user-registered.json
  echo '{\"userId\": \"u1\", \"email\": \"ana@example.com\"}' | \\
      switchyard produce notification.send.welcome --key u1 --header request-id=r-1")]
    Produce(ProduceArgs),
    /// Follow a topic and print each record for a person: topic,
    /// partition, offset and time; the key; the headers, one per line; the
    /// value (JSON pretty-printed, text as it is, other bytes escaped).
    /// Joins no consumer group: every partition is read directly, from the
    /// end it has at start (new records only) or from the beginning. A
    /// topic that does not exist yet is waited for.
    #[command(after_help = "Examples:
  switchyard consume notification.send.email
  switchyard consume user.created --from-beginning --count 10
  switchyard consume create-user-response --brokers 127.0.0.1:19092 --json | jq .value")]
    Consume(ConsumeArgs),
    /// Save real events from a topic as an event file (a JSON array in the
    /// format `plugin test --event` and `produce --event` read): written
    /// in one go when --count events arrived, or with what arrived when
    /// --timeout runs out (then exit status 1).
    #[command(after_help = "Examples:
  switchyard record --topic user.created --count 3 --out plugins/stats-increment/fixtures/signup.events.json
  switchyard record --topic create-user --count 1 --from-beginning --timeout 30 > create-user.json
  switchyard plugin test --config config/switchyard.toml --plugin stats-increment \\
      --event plugins/stats-increment/fixtures/signup.events.json")]
    Record(RecordArgs),
}

#[derive(Debug, Args)]
struct DevArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Port for the broker `dev` starts (a free one if it is taken).
    #[arg(long, default_value_t = 9092)]
    broker_port: u16,
    /// A Tansu binary to use instead of finding or installing one.
    #[arg(long, env = "SWITCHYARD_TANSU")]
    tansu: Option<PathBuf>,
    /// Do not watch the plugins' sources (by default, saving a plugin's
    /// source rebuilds it with its own toolchain and reloads it).
    #[arg(long)]
    no_watch: bool,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// One line per dead letter: id, when, plugin, outcome, origin, error.
    #[command(after_help = "Examples:
  switchyard dlq list
  switchyard dlq list --plugin stats-increment --since 2h
  switchyard dlq list --outcome parked --json")]
    List(DlqArgs),
    /// One dead letter in full: key, value, every header.
    #[command(after_help = "Example:
  switchyard dlq show 0:42")]
    Show {
        /// The dead letter's id, `partition:offset` (from `list`).
        id: String,
        #[command(flatten)]
        args: DlqArgs,
    },
    /// Produce the selected dead letters back to their origin topics, each
    /// for its plugin only and under its original dedupe key, so the
    /// plugin handles it once and the other plugins of that topic do not
    /// see it again. Needs a filter or --all.
    #[command(after_help = "Examples:
  switchyard dlq replay --plugin stats-increment --reason \"deadline\" --dry-run
  switchyard dlq replay --id 0:42 --id 1:7
  switchyard dlq replay --outcome parked --since 1h")]
    Replay {
        #[command(flatten)]
        args: DlqArgs,
        /// Replay every dead letter the filters select, even with none.
        #[arg(long)]
        all: bool,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
struct DlqArgs {
    #[command(flatten)]
    target: Target,
    /// Only this plugin's dead letters.
    #[arg(long)]
    plugin: Option<String>,
    /// Only those whose error contains this text (any case).
    #[arg(long)]
    reason: Option<String>,
    /// Only this outcome: failed, rejected, retry or parked.
    #[arg(long)]
    outcome: Option<String>,
    /// Only those dead-lettered since: a time (2026-11-22T10:00:00Z) or an
    /// age (30m, 2h, 7d).
    #[arg(long, value_parser = switchyard::dlq::parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only those dead-lettered before: a time or an age.
    #[arg(long, value_parser = switchyard::dlq::parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only these ids (`partition:offset`); repeatable.
    #[arg(long = "id")]
    ids: Vec<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

impl DlqArgs {
    fn filter(&self) -> switchyard::dlq::Filter {
        switchyard::dlq::Filter {
            plugin: self.plugin.clone(),
            reason: self.reason.clone(),
            outcome: self.outcome.clone(),
            since: self.since,
            until: self.until,
            ids: self.ids.clone(),
        }
    }

    fn narrowed(&self) -> bool {
        self.plugin.is_some()
            || self.reason.is_some()
            || self.outcome.is_some()
            || self.since.is_some()
            || self.until.is_some()
            || !self.ids.is_empty()
    }

    fn loaded(&self) -> anyhow::Result<switchyard::config::Loaded> {
        switchyard::app::load_config(&self.target.options())
    }
}

#[derive(Debug, Args)]
struct ExplainArgs {
    /// The routing config (TOML).
    #[arg(long, short = 'c', default_value = "config/switchyard.toml")]
    config: PathBuf,
    /// The event's topic.
    #[arg(long, required_unless_present = "event")]
    topic: Option<String>,
    /// An event file (the `plugin test` format: topic, key, headers and
    /// value; the first event of an array) instead of the options.
    #[arg(long, conflicts_with_all = ["topic", "value", "headers", "key"])]
    event: Option<PathBuf>,
    /// Header `name=value`; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// A file holding the event's value (e.g. its JSON).
    #[arg(long)]
    value: Option<PathBuf>,
    /// Record key.
    #[arg(long)]
    key: Option<String>,
    /// Print JSON instead of the readable report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// Topic (not needed with --event).
    topic: Option<String>,
    /// Record key.
    #[arg(long)]
    key: Option<String>,
    /// Header `name=value`; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// An event file (JSON object or array) to produce instead of stdin.
    #[arg(long, conflicts_with = "topic")]
    event: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "SWITCHYARD_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
}

/// Where `consume` and `record` read from.
#[derive(Debug, Args)]
struct TailArgs {
    /// Start at the first record of each partition (the same as --from
    /// start).
    #[arg(long, conflicts_with = "from")]
    from_beginning: bool,
    /// Where to start in each partition: `end` (its end when the command
    /// starts: new records only) or `start`.
    #[arg(long, value_enum, default_value_t = switchyard::tail::StartAt::End)]
    from: switchyard::tail::StartAt,
    /// Fail at once when the topic does not exist, instead of waiting for
    /// it to appear.
    #[arg(long)]
    no_wait: bool,
    /// Kafka bootstrap servers [default: kafka.brokers of the config, else
    /// 127.0.0.1:9092].
    #[arg(long, env = "SWITCHYARD_BROKERS")]
    brokers: Option<String>,
    /// The routing config to take kafka.brokers from [default:
    /// config/switchyard.toml, when it exists].
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
}

impl TailArgs {
    fn options(&self, topic: &str) -> anyhow::Result<switchyard::tail::TailOptions> {
        let brokers =
            switchyard::tail::resolve_brokers(self.brokers.as_deref(), self.config.as_deref())?;
        Ok(switchyard::tail::TailOptions {
            brokers,
            topic: topic.to_string(),
            start: if self.from_beginning {
                switchyard::tail::StartAt::Start
            } else {
                self.from
            },
            wait_for_topic: !self.no_wait,
        })
    }
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// The topic to follow.
    topic: String,
    #[command(flatten)]
    tail: TailArgs,
    /// Stop after this many records (default: follow until Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// One JSON object per line (topic, partition, offset, timestamp, key,
    /// headers, and value, value_raw or value_hex), for jq.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RecordArgs {
    /// The topic to record.
    #[arg(long)]
    topic: String,
    /// How many events to save.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// The event file to write (`-` or none: standard output); replaced
    /// whole, only once the events are in.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stop waiting after this many seconds and save the events that
    /// arrived (exit status 1 when fewer than --count).
    #[arg(long)]
    timeout: Option<u64>,
    #[command(flatten)]
    tail: TailArgs,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("header {s:?} is not name=value"))
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Readable lines.
    Text,
    /// JSON lines.
    Json,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// Directory of the plugin files; overrides `plugins.dir`.
    #[arg(long, env = "SWITCHYARD_PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,
    /// Do not watch the plugin files and the config for changes.
    #[arg(long)]
    no_reload: bool,
    /// The admin HTTP server's address (`/health`, `/metrics`, `/plugins`,
    /// `/routes`); overrides `[admin] address`. Port 0 picks a free port.
    #[arg(long, env = "SWITCHYARD_ADMIN")]
    admin: Option<String>,
    /// Log format: `text` (for people) or `json` (one object per line,
    /// with the event's fields: plugin, topic, partition, offset, event_id,
    /// request_id, trace_id).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SWITCHYARD_LOG_FORMAT")]
    log_format: LogFormat,
}

impl RunArgs {
    fn options(&self) -> switchyard::app::RunOptions {
        switchyard::app::RunOptions {
            plugin_dir: self.plugin_dir.clone(),
            no_reload: self.no_reload,
            admin: self.admin.clone(),
            ..self.target.options()
        }
    }
}

/// The config file and the overrides of where it points: shared by the
/// commands that talk to the broker and the database.
#[derive(Debug, Args)]
struct Target {
    /// The routing config (TOML).
    #[arg(long, short = 'c', default_value = "config/switchyard.toml")]
    config: PathBuf,
    /// Kafka bootstrap servers; overrides `kafka.brokers`.
    #[arg(long, env = "SWITCHYARD_BROKERS")]
    brokers: Option<String>,
    /// Database URL; overrides `database.url`.
    #[arg(long, env = "SWITCHYARD_DATABASE_URL")]
    database: Option<String>,
}

impl Target {
    fn options(&self) -> switchyard::app::RunOptions {
        switchyard::app::RunOptions {
            config: self.config.clone(),
            brokers: self.brokers.clone(),
            database: self.database.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Run a plugin on events and show everything it did: the outcome and
    /// its reason, the SQL it ran, the rows it changed and the messages it
    /// would publish.
    ///
    /// Exit status: 0 when every event committed (done or skipped), 1 when
    /// one did not (retry, rejected or a failure); with --expect, 0 when
    /// the run matches the expectation and 1 when it does not; with
    /// `--database both`, 1 also when the two backends differ; 2 when the
    /// run could not start (plugin, event file, database, expectation).
    #[command(after_help = "Examples:
  switchyard plugin test target/wasm32-wasip2/plugin/profile_creation.wasm \\
      --event plugins/profile-creation/examples/create-user.json
  switchyard plugin test --config config/switchyard.toml --plugin role-mapping \\
      --event plugins/role-mapping/fixtures/user-created.events.json --database both
  switchyard plugin test --config config/switchyard.toml --plugin stats-increment \\
      --event plugins/stats-increment/fixtures/quota.events.json \\
      --expect plugins/stats-increment/fixtures/quota.expect.json   # --update rewrites it
  echo '{\"topic\": \"user.created\", \"value\": {\"userId\": \"u1\"}}' | \\
      switchyard plugin test stats_increment.wasm --event - --json
  switchyard plugin test welcome_notification.wasm --event ev.json \\
      --settings '{\"subject\": \"Hello {name}\"}' --database postgres://postgres@127.0.0.1/dev")]
    Test(Box<TestArgs>),
    /// Make a new plugin under plugins/: its package (a crate, an npm
    /// package or a Python module), a handler that decodes an event, writes
    /// a row and publishes a message, migrations for PostgreSQL and SQLite,
    /// an example event and a unit test. A Rust crate joins the workspace.
    #[command(after_help = "Examples:
  switchyard plugin new audit-trail --lang rust
  switchyard plugin new audit-trail --lang ts
  switchyard plugin new audit-trail --lang python")]
    New {
        /// The plugin's name (lower-case letters, digits and dashes), as the
        /// routing config will name it.
        name: String,
        /// Its language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: switchyard::scaffold::Lang,
    },
    /// Build plugins with their own toolchains (cargo, componentize-js,
    /// componentize-py) into target/wasm32-wasip2/plugin/ (or
    /// SWITCHYARD_PLUGIN_DIR); with no directory, every plugin under
    /// plugins/. Runs scripts/build-plugins.
    #[command(after_help = "Examples:
  switchyard plugin build plugins/audit-trail
  switchyard plugin build")]
    Build {
        /// Plugin directories.
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct TestArgs {
    /// The plugin component (`.wasm` built for wasm32-wasip2); with
    /// --config and --plugin, the config's file for the plugin by default.
    #[arg(required_unless_present = "plugin_name")]
    plugin: Option<PathBuf>,
    /// Event file (JSON object or array of objects); `-` reads standard
    /// input. Repeat to run several files in order on the same database.
    #[arg(long = "event", short = 'e', required = true)]
    events: Vec<PathBuf>,
    /// `sqlite` (a throwaway in-memory database, the default), `postgres`
    /// (a throwaway database on SWITCHYARD_TEST_PG_URL, else the local
    /// server), `both` (one run on each, compared), or a database URL.
    #[arg(
        long,
        default_value = "sqlite::memory:",
        env = "SWITCHYARD_DATABASE_URL"
    )]
    database: String,
    /// A routing config to take the plugin's grants, settings and limits
    /// from, as `switchyard run` would (with --plugin).
    #[arg(long, requires = "plugin_name")]
    config: Option<PathBuf>,
    /// The plugin's name in --config.
    #[arg(long = "plugin", requires = "config")]
    plugin_name: Option<String>,
    /// Directory of the plugin files; overrides the config's `plugins.dir`
    /// (with --config; ignored without it).
    #[arg(long, env = "SWITCHYARD_PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,
    /// The plugin's settings as a JSON object, as under the plugin's
    /// `settings` in the routing config.
    #[arg(long, conflicts_with = "config")]
    settings: Option<String>,
    /// Topic patterns the plugin may publish to (`*` matches any run of
    /// characters). Repeatable; the default grants every topic.
    #[arg(long = "grant", conflicts_with = "config")]
    grants: Vec<String>,
    /// SQL script to run before the events, after the plugin's migrations
    /// (fixture rows). Repeatable.
    #[arg(long)]
    setup: Vec<PathBuf>,
    /// Deadline per call in milliseconds.
    #[arg(long, conflicts_with = "config")]
    deadline_ms: Option<u64>,
    /// Compare what the plugin did (outcomes, rows changed, messages
    /// published) with the expectation stored in this file, and show a
    /// diff when it differs. Exit status 0 only when it matches.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// With --expect: write this run's effects as the expectation.
    #[arg(long, requires = "expect")]
    update: bool,
    /// Print one JSON document instead of the readable report.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run(args) => {
            // One line per handled event is for `dev`; a router in
            // service logs what needs a person (set SWITCHYARD_LOG to
            // `info,switchyard::handled=info` to see every event).
            init_logging_format("info,switchyard::handled=warn", args.log_format);
            let options = args.options();
            finish(
                runtime.block_on(switchyard::app::run(options, shutdown_signal())),
                true,
            )
        }
        Command::Dev(args) => {
            init_logging_format("info", args.run.log_format);
            finish(runtime.block_on(dev_cmd(args)), true)
        }
        Command::Dlq(cmd) => {
            init_logging("warn");
            finish(runtime.block_on(dlq_cmd(cmd)), false)
        }
        Command::Explain(args) => {
            init_logging("warn");
            finish(explain_cmd(&args), false)
        }
        Command::Check(args) => {
            init_logging("warn");
            let checked = runtime.block_on(switchyard::app::check(&args.options()));
            finish(checked.map(|report| print!("{report}")), false)
        }
        Command::Produce(args) => {
            init_logging("warn");
            finish(runtime.block_on(produce_cmd(args)), false)
        }
        Command::Consume(args) => {
            init_logging("warn");
            finish(runtime.block_on(consume_cmd(args)), false)
        }
        Command::Record(args) => {
            init_logging("warn");
            finish(runtime.block_on(record_cmd(args)), false)
        }
        Command::Plugin(PluginCommand::New { name, lang }) => match plugin_new(&name, lang) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Plugin(PluginCommand::Build { dirs }) => match plugin_build(&dirs) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Plugin(PluginCommand::Test(args)) => {
            init_logging("warn,switchyard::plugin=off,switchyard::capabilities=off");
            match runtime.block_on(plugin_test_cmd(*args)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The exit status of a command: 0, or 1 with the error on stderr (and in
/// the log, for the long-running commands whose output is the log).
fn finish(result: anyhow::Result<()>, log: bool) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if log {
                tracing::error!("{e:#}");
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dev_cmd(args: DevArgs) -> anyhow::Result<()> {
    use switchyard::dev;
    let mut options = args.run.options();
    let mut broker = None;
    let note = if options.brokers.is_some() {
        "yours".to_string()
    } else {
        let tansu = match dev::find_tansu(args.tansu.as_deref()) {
            Some(t) => t,
            None => dev::install_tansu().await?,
        };
        eprintln!("switchyard dev: starting the broker ({})", tansu.display());
        let b = dev::Broker::start(&tansu, args.broker_port).await?;
        options.brokers = Some(b.address.clone());
        // Tansu 0.6 answers a fetch only when fetch.wait.max.ms runs out,
        // even with data waiting: 500 ms per event at the default, felt by
        // whoever is trying a plugin. The config's own value wins.
        options
            .consumer_defaults
            .push(("fetch.wait.max.ms".to_string(), "25".to_string()));
        let note = format!("Tansu, in memory, stopped on exit; log {}", b.log.display());
        broker = Some(b);
        // The broker is new and empty: markers keyed by the old broker's
        // offsets would skip new events as duplicates, and outbox rows
        // belong to topics that no longer exist.
        let loaded = switchyard::app::load_config(&options)?;
        let db = switchyard::database::Database::connect(&loaded.config.database.url, 1).await?;
        switchyard::outbox::create_tables(&db).await?;
        db.run_script("DELETE FROM switchyard_processed; DELETE FROM switchyard_outbox")
            .await
            .context("clearing the previous dev session's markers and outbox")?;
        db.close().await;
        eprintln!(
            "switchyard dev: new broker, so the previous session's processed-markers and outbox were cleared (plugin tables are kept)"
        );
        note
    };
    eprintln!("switchyard dev: compiling the plugins and starting the router");
    let watch = dev_watch(&args, &mut options);
    let watch_note = match &watch {
        Ok(w) => switchyard::watch::describe(w),
        Err(why) => why.clone(),
    };
    options.ready = Some(switchyard::app::ReadyHook(std::sync::Arc::new(
        move |ready| println!("{}", dev::banner(ready, &note, &watch_note)),
    )));
    let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel::<()>();
    let watch_task = match (watch, &options.reload_reports) {
        (Ok(w), Some(reports)) => Some(tokio::spawn(switchyard::watch::run(
            w,
            reports.clone(),
            async {
                let _ = watch_stopped.await;
            },
        ))),
        _ => None,
    };
    let result = switchyard::app::run(options, shutdown_signal()).await;
    let _ = stop_watch.send(());
    if let Some(task) = watch_task {
        // Not awaited: a build in progress (or a wait for its reload)
        // must not hold up the shutdown; its child process is killed
        // with the task.
        task.abort();
        let _ = task.await;
    }
    if let Some(b) = broker {
        b.stop().await;
    }
    result
}

/// Whether `dev` watches the plugins' sources, and from which checkout;
/// `Err` says why not. Sets up the reload reports the watcher follows.
fn dev_watch(
    args: &DevArgs,
    options: &mut switchyard::app::RunOptions,
) -> Result<switchyard::watch::WatchOptions, String> {
    if args.no_watch {
        return Err("source watch off (--no-watch): rebuild with `switchyard plugin build`".into());
    }
    if options.no_reload {
        return Err("source watch off: --no-reload".into());
    }
    let config_dir = options
        .config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    // The config's checkout first: `dev --config` of another checkout
    // watches that one.
    let root = switchyard::scaffold::repo_root(&config_dir)
        .or_else(|_| switchyard::scaffold::repo_root(Path::new(".")))
        .map_err(|_| {
            "source watch off: neither this directory nor the config's is inside a Switchyard checkout (plugins/ and wit/); rebuild plugins yourself and their files are reloaded".to_string()
        })?;
    let (reports, _) = tokio::sync::broadcast::channel(64);
    options.reload_reports = Some(reports);
    Ok(switchyard::watch::WatchOptions {
        root,
        // Without the reports' sender: the watcher must see the channel
        // close when the reloader stops.
        run: switchyard::app::RunOptions {
            reload_reports: None,
            ..options.clone()
        },
    })
}

async fn dlq_cmd(cmd: DlqCommand) -> anyhow::Result<()> {
    use switchyard::dlq;
    let args = match &cmd {
        DlqCommand::List(a)
        | DlqCommand::Show { args: a, .. }
        | DlqCommand::Replay { args: a, .. } => a,
    };
    let loaded = args.loaded()?;
    let config = loaded.config.clone();
    let (brokers, topic) = (
        config.kafka.brokers.clone(),
        config.dead_letter.topic.clone(),
    );
    eprintln!("reading {topic} from {brokers}...");
    let read = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            dlq::read_all(&brokers, &topic, Duration::from_secs(60))
        })
        .await??
    };
    let letters = read.unwrap_or_else(|| {
        eprintln!(
            "the dead-letter topic {topic} does not exist on {brokers}: nothing has been dead-lettered there yet (if you expected letters, check [dead_letter] topic in the config and --brokers)"
        );
        Vec::new()
    });
    let filter = args.filter();
    let selected: Vec<&dlq::DeadLetter> = letters.iter().filter(|d| filter.accepts(d)).collect();
    match &cmd {
        DlqCommand::List(a) => {
            if a.json {
                let list: Vec<_> = selected.iter().map(|d| d.to_json()).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", dlq::render_list(&selected));
            }
        }
        DlqCommand::Show { id, .. } => {
            let d = letters.iter().find(|d| &d.id() == id).with_context(|| {
                format!(
                    "no dead letter {id} in {}: `switchyard dlq list` shows the ids",
                    config.dead_letter.topic
                )
            })?;
            println!("{}", serde_json::to_string_pretty(&d.to_json())?);
        }
        DlqCommand::Replay { all, dry_run, .. } => {
            anyhow::ensure!(
                *all || args.narrowed(),
                "say which dead letters to replay (--plugin, --reason, --outcome, --since, --until, --id), or --all for every one"
            );
            let db = switchyard::database::Database::connect(&config.database.url, 2).await?;
            let producer: rdkafka::producer::FutureProducer =
                switchyard::kafka::producer_config(&config.kafka.brokers, &config.kafka.producer)
                    .create()
                    .context("creating the producer")?;
            let total = selected.len();
            let verb = if *dry_run { "would replay" } else { "replayed" };
            let routes = switchyard::routes::RouteTable::new(&config.routes);
            let done = dlq::replay(
                &db,
                &producer,
                &config.kafka.group,
                &routes,
                &selected,
                *dry_run,
                |n, r| match &r.skipped {
                    None => eprintln!(
                        "[{n}/{total}] {verb} {} -> {}/{} for {} (dedupe key {})",
                        r.id, r.topic, r.partition, r.plugin, r.dedupe_key
                    ),
                    Some(why) => eprintln!("[{n}/{total}] skipped {} ({}): {why}", r.id, r.plugin),
                },
            )
            .await;
            db.close().await;
            let done = done?;
            let replayed = done.iter().filter(|r| r.skipped.is_none()).count();
            let already = done
                .iter()
                .filter(|r| matches!(r.skipped, Some(dlq::Skip::AlreadyReplayed(_))))
                .count();
            let refused = done.len() - replayed - already;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "{verb} {replayed} dead letter(s); {already} replayed already; {refused} could not be replayed"
                );
            }
            anyhow::ensure!(
                refused == 0,
                "{refused} dead letter(s) could not be replayed: the lines above say why"
            );
        }
    }
    Ok(())
}

fn explain_cmd(args: &ExplainArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let loaded = switchyard::config::Loaded::from_str(&args.config, &text)?;
    let payload = match &args.value {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    if let Some(file) = &args.event {
        let events = switchyard::plugin_test::read_events(file)?;
        let event = events
            .into_iter()
            .next()
            .with_context(|| format!("{} holds no event", file.display()))?;
        return print_explanation(&loaded, &text, &event, args.json);
    }
    let event = switchyard::event::Event {
        topic: args.topic.clone().unwrap_or_default(),
        key: args.key.clone().map(String::into_bytes),
        payload,
        headers: args
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone().into_bytes())))
            .collect(),
        ..Default::default()
    };
    print_explanation(&loaded, &text, &event, args.json)
}

fn print_explanation(
    loaded: &switchyard::config::Loaded,
    text: &str,
    event: &switchyard::event::Event,
    json: bool,
) -> anyhow::Result<()> {
    let explanation = switchyard::explain::explain(loaded, text, event);
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation.json)?);
    } else {
        print!("{}", explanation.text);
    }
    Ok(())
}

async fn plugin_test_cmd(args: TestArgs) -> anyhow::Result<ExitCode> {
    use switchyard::expect::{self, Verdict};
    let started = chrono::Utc::now();
    let (plugin, env) = match (&args.config, &args.plugin_name) {
        (Some(config), Some(name)) => {
            let loaded = switchyard::config::Loaded::from_file(config)?;
            let found = loaded
                .plugin_envs(args.plugin_dir.as_deref())
                .into_iter()
                .find(|(n, ..)| n == name);
            let Some((_, path, env, ..)) = found else {
                let mut names: Vec<&String> = loaded.config.plugins.plugins.keys().collect();
                names.sort();
                anyhow::bail!(
                    "{} has no plugin {name:?}; it has: {}",
                    config.display(),
                    names
                        .iter()
                        .map(|n| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            (args.plugin.clone().unwrap_or(path), Some(env))
        }
        _ => match &args.plugin {
            Some(p) => (p.clone(), None),
            None => anyhow::bail!("give the plugin's .wasm, or --config FILE --plugin NAME"),
        },
    };
    let settings: serde_json::Value =
        serde_json::from_str(args.settings.as_deref().unwrap_or("{}"))
            .context("--settings is not valid JSON")?;
    let serde_json::Value::Object(settings) = settings else {
        anyhow::bail!("--settings must be a JSON object, like '{{\"subject\": \"Hi {{name}}\"}}'");
    };
    let mut limits = Limits::default();
    if let Some(ms) = args.deadline_ms {
        limits.deadline_ms = ms;
    }
    let grants = if args.grants.is_empty() {
        vec!["*".to_string()]
    } else {
        args.grants.clone()
    };
    let options = TestOptions {
        plugin,
        events: args.events.clone(),
        database: String::new(),
        settings,
        grants,
        limits,
        setup: args.setup.clone(),
        env,
    };
    let choice = plugin_test::DatabaseChoice::parse(&args.database);
    let runs = plugin_test::run_on(&options, &choice).await?;
    let span = expect::RunSpan {
        started,
        finished: chrono::Utc::now(),
    };
    let effects: Vec<serde_json::Value> = runs
        .iter()
        .map(|(_, r)| expect::effects(&r.json, &r.inputs, span))
        .collect();
    let mut ok = true;
    let mut notes = String::new();
    let differ = match effects.as_slice() {
        [a, b] => expect::backends_differ(a, b),
        _ => None,
    };
    if runs.len() == 2 {
        match &differ {
            Some(diff) => {
                ok = false;
                notes.push_str(&format!(
                    "\nSQLite and PostgreSQL DIFFER (- sqlite, + postgres):\n{diff}"
                ));
            }
            None => notes.push_str(
                "\nSQLite and PostgreSQL agree: same outcomes, rows changed and publishes\n",
            ),
        }
    }
    let mut verdicts = Vec::new();
    if let Some(file) = &args.expect {
        if args.update && differ.is_some() {
            notes.push_str(&format!(
                "\nnot writing {}: the backends differ (above); make the plugin behave the same on both first\n",
                file.display()
            ));
        } else if args.update {
            if let Some(first) = effects.first() {
                expect::write(file, first)?;
            }
            notes.push_str(&format!(
                "\nwrote the expectation {} from this run\n",
                file.display()
            ));
        } else {
            for ((label, _), e) in runs.iter().zip(&effects) {
                let verdict = expect::check(file, e)?;
                match &verdict {
                    Verdict::Matches => notes.push_str(&format!(
                        "\nexpectation {}: matches ({label})\n",
                        file.display()
                    )),
                    Verdict::Differs(diff) => {
                        ok = false;
                        notes.push_str(&format!(
                            "\nexpectation {}: DIFFERS on {label} (- expected, + this run):\n{diff}(run again with --update to accept this run)\n",
                            file.display()
                        ));
                    }
                }
                verdicts.push(serde_json::json!({
                    "database": label,
                    "matches": verdict == Verdict::Matches,
                    "diff": match verdict { Verdict::Differs(d) => Some(d), Verdict::Matches => None },
                }));
            }
        }
    } else {
        ok &= runs.iter().all(|(_, r)| r.all_committed);
    }
    if args.json {
        let doc = match runs.as_slice() {
            [(_, only)] if args.expect.is_none() => only.json.clone(),
            _ => serde_json::json!({
                "runs": runs.iter().map(|(l, r)| (l.clone(), r.json.clone())).collect::<serde_json::Map<_, _>>(),
                "backends_differ": differ,
                "expectation": verdicts,
            }),
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for (label, report) in &runs {
            if runs.len() > 1 {
                println!("═══ on {label} ═══");
            }
            print!("{}", plugin_test::render_text(&report.json));
        }
        print!("{notes}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn produce_cmd(args: ProduceArgs) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let events = match (&args.event, &args.topic) {
        (Some(file), _) => switchyard::plugin_test::read_events(file)?,
        (None, Some(topic)) => {
            let value = std::io::read_to_string(std::io::stdin())
                .context("reading the value from stdin")?;
            vec![switchyard::event::Event {
                topic: topic.clone(),
                key: args.key.clone().map(String::into_bytes),
                payload: value.trim_end_matches('\n').as_bytes().to_vec(),
                headers: args
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone().into_bytes())))
                    .collect(),
                ..Default::default()
            }]
        }
        (None, None) => anyhow::bail!("give a topic (value on stdin) or --event FILE"),
    };
    let producer: FutureProducer =
        switchyard::kafka::producer_config(&args.brokers, &Default::default())
            .create()
            .context("creating the producer")?;
    for ev in events {
        let mut record = FutureRecord::<[u8], [u8]>::to(&ev.topic)
            .payload(&ev.payload)
            .headers(switchyard::kafka::to_headers(&ev.headers));
        if let Some(k) = &ev.key {
            record = record.key(k);
        }
        let delivery = producer
            .send(record, std::time::Duration::from_secs(15))
            .await
            .map_err(|(e, _)| {
                anyhow::anyhow!("producing to {} on {}: {e}", ev.topic, args.brokers)
            })?;
        println!(
            "produced to {} [partition {}] at offset {}",
            ev.topic, delivery.partition, delivery.offset
        );
    }
    Ok(())
}

/// `switchyard consume`.
async fn consume_cmd(args: ConsumeArgs) -> anyhow::Result<()> {
    switchyard::tail::consume_command(switchyard::tail::ConsumeOptions {
        tail: args.tail.options(&args.topic)?,
        count: args.count,
        json: args.json,
    })
    .await
}

/// `switchyard record`.
async fn record_cmd(args: RecordArgs) -> anyhow::Result<()> {
    switchyard::tail::record_command(switchyard::tail::RecordOptions {
        tail: args.tail.options(&args.topic)?,
        count: usize::try_from(args.count).context("--count is too large")?,
        out: args.out.filter(|p| p.as_os_str() != "-"),
        timeout: args.timeout.map(Duration::from_secs),
    })
    .await
}

/// Log to stderr; `SWITCHYARD_LOG` (or `RUST_LOG`) overrides `default`.
fn init_logging(default: &str) {
    init_logging_format(default, LogFormat::Text);
}

fn init_logging_format(default: &str, format: LogFormat) {
    let filter = std::env::var("SWITCHYARD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a person at a terminal: a log written to a file or
    // a pipe stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        _ = term => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// `switchyard plugin new`.
fn plugin_new(name: &str, lang: switchyard::scaffold::Lang) -> anyhow::Result<()> {
    use switchyard::scaffold::{Lang, config_snippet, create, repo_root};
    let root = repo_root(Path::new("."))?;
    let created = create(&root, name, lang)?;
    let rel = Path::new("plugins").join(name);
    println!("created {} ({}):", rel.display(), lang.name());
    for f in &created.files {
        println!("  {}", f.display());
    }
    if created.workspace_member_added {
        println!(
            "  Cargo.toml: \"{}\" added to [workspace] members",
            rel.display()
        );
    }
    let wasm = format!(
        "target/wasm32-wasip2/plugin/{}.wasm",
        name.replace('-', "_")
    );
    let unit = match lang {
        Lang::Rust => format!("cargo test -p {name}"),
        Lang::Ts => format!("node plugins/sdk-ts/build.mjs --test {}", rel.display()),
        Lang::Python => format!("python3 -m unittest discover -s {}", rel.display()),
    };
    println!(
        "\nnext:\n  build it        switchyard plugin build {rel}\n  try it          switchyard plugin test {wasm} --event {rel}/examples/example.json\n  its unit test   {unit}\n  run it          add to config/switchyard.toml:\n\n{snippet}\n                  then `scripts/run` (switchyard dev: it rebuilds and reloads the\n                  plugin each time you save its source) and, from another shell,\n                  switchyard produce --event {rel}/examples/example.json\n                  switchyard consume {name}.recorded --from-beginning\n  keep it as a test\n                  switchyard record --topic {name}.in --from-beginning --count 1 --out {rel}/fixtures/first.events.json\n                  switchyard plugin test --config config/switchyard.toml --plugin {name} --event {rel}/fixtures/first.events.json \\\n                      --expect {rel}/fixtures/first.expect.json --update --database both",
        rel = rel.display(),
        snippet = config_snippet(name)
            .lines()
            .map(|l| format!("                    {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    Ok(())
}

/// `switchyard plugin build`: scripts/build-plugins of the checkout.
fn plugin_build(dirs: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let root = switchyard::scaffold::repo_root(Path::new("."))?;
    let script = root.join("scripts/build-plugins");
    let status = std::process::Command::new(&script)
        .args(dirs)
        .status()
        .map_err(|e| anyhow::anyhow!("{}: cannot run: {e}", script.display()))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
