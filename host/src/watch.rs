//! `switchyard dev`'s source watcher: save a plugin's source and it is
//! rebuilt with its own toolchain, then hot-reloaded, with one line per
//! rebuild (build time, write → serving, save → serving) or the build's or
//! the reload's error, repeated until it is fixed.
//!
//! - **What is watched**: every plugin directory under the checkout's
//!   `plugins/` (found as `scripts/build-plugins` finds them: a
//!   `Cargo.toml`, a `package.json` with a `"switchyard"` key, a
//!   `pyproject.toml` with `[tool.switchyard]`), the three SDKs and
//!   `wit/`. Only a plugin the routing config runs is rebuilt: its
//!   component is the config's file for it. A change in an SDK or the WIT
//!   rebuilds every plugin that uses it.
//! - **What counts as a change**: source files (`.rs`, `.toml`, `.ts`,
//!   `.js`, `.json`, `.py`, `.sql`, `.wit`), not under `node_modules`,
//!   `target`, `__pycache__`, hidden directories, `examples/` or tests;
//!   editors' swap and backup files do not count.
//! - **How it builds**: Rust with `cargo build --target wasm32-wasip2
//!   --profile plugin-dev -p CRATE` (the `plugin` profile without LTO,
//!   for speed), copied into the config's plugin directory; TypeScript and Python
//!   with `scripts/build-plugins DIR` (which installs their toolchains on
//!   first use). The reloader (see [`crate::reload`]) picks the new file
//!   up and reports back.

use crate::reload::{ReloadReport, absolute};
use anyhow::Context as _;
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// Quiet time after the last source event before a build starts: an
/// editor's save is several events.
const QUIET: Duration = Duration::from_millis(80);

/// Longest wait for the reload of a build (a TypeScript component takes
/// about 20 s to compile the first time).
const RELOAD_WAIT: Duration = Duration::from_secs(180);

/// Most lines of a failed build's output shown.
const ERROR_LINES: usize = 60;

/// A plugin's language, as its directory says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lang {
    /// `Cargo.toml`: a crate on `plugins/sdk`.
    Rust,
    /// `package.json` with a `"switchyard"` key: `plugins/sdk-ts`.
    TypeScript,
    /// `pyproject.toml` with `[tool.switchyard]`: `plugins/sdk-py`.
    Python,
}

/// One plugin's source directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The directory, absolute.
    pub dir: PathBuf,
    /// Its language.
    pub lang: Lang,
    /// The crate's name (Rust).
    pub crate_name: Option<String>,
    /// The component's file name (`<directory, - as _>.wasm`).
    pub wasm: String,
}

/// The plugin directories under `root/plugins` (not the SDKs), by the
/// same rules as `scripts/build-plugins`.
pub fn discover(root: &Path) -> Vec<Source> {
    let Ok(entries) = std::fs::read_dir(root.join("plugins")) else {
        return Vec::new();
    };
    let mut found: Vec<Source> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|d| d.is_dir())
        .filter_map(|dir| {
            let name = dir.file_name()?.to_str()?.to_string();
            if name == "sdk" || name.starts_with("sdk-") {
                return None;
            }
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
            let (lang, crate_name) = if let Some(manifest) = read("Cargo.toml") {
                let crate_name = manifest
                    .parse::<toml::Table>()
                    .ok()
                    .and_then(|t| t.get("package")?.get("name")?.as_str().map(str::to_string))
                    .unwrap_or_else(|| name.clone());
                (Lang::Rust, Some(crate_name))
            } else if read("package.json").is_some_and(|p| p.contains("\"switchyard\"")) {
                (Lang::TypeScript, None)
            } else if read("pyproject.toml")
                .is_some_and(|p| p.lines().any(|l| l.trim() == "[tool.switchyard]"))
            {
                (Lang::Python, None)
            } else {
                return None;
            };
            Some(Source {
                wasm: format!("{}.wasm", name.replace('-', "_")),
                dir,
                lang,
                crate_name,
            })
        })
        .collect();
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    found
}

/// What a changed path asks to rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This plugin directory's sources.
    Plugin(PathBuf),
    /// An SDK: every plugin of the language.
    Sdk(Lang),
    /// The WIT: every plugin.
    Wit,
}

/// Whether `path` (absolute) is a source change, and of what; `None` for
/// files no build reads (dependencies, build output, editor files,
/// examples, tests).
pub fn classify(root: &Path, path: &Path) -> Option<Change> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    let file = *parts.last()?;
    let ext = Path::new(file).extension().and_then(|e| e.to_str())?;
    let source_ext = [
        "rs", "toml", "ts", "mts", "js", "mjs", "json", "py", "sql", "wit",
    ];
    if !source_ext.contains(&ext) {
        return None;
    }
    if file.starts_with('.') || file.starts_with('#') || file.ends_with('~') {
        return None;
    }
    let ignored =
        |c: &&str| matches!(*c, "node_modules" | "target" | "__pycache__") || c.starts_with('.');
    if parts[..parts.len() - 1].iter().any(ignored) {
        return None;
    }
    // The types `jco guest-types` writes for the TypeScript SDK.
    if parts.starts_with(&["plugins", "sdk-ts", "types"]) {
        return None;
    }
    match parts.as_slice() {
        ["wit", ..] => Some(Change::Wit),
        ["plugins", dir, rest @ ..] if !rest.is_empty() => {
            if matches!(
                rest.first(),
                Some(&"examples" | &"test" | &"tests" | &"fixtures" | &"testing")
            ) {
                return None;
            }
            match *dir {
                "sdk" => Some(Change::Sdk(Lang::Rust)),
                "sdk-ts" => Some(Change::Sdk(Lang::TypeScript)),
                "sdk-py" => Some(Change::Sdk(Lang::Python)),
                _ => Some(Change::Plugin(root.join("plugins").join(dir))),
            }
        }
        _ => None,
    }
}

/// Where `dev` watches from.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The checkout's root (holds `plugins/`, `wit/`, `scripts/`).
    pub root: PathBuf,
    /// What `dev` runs with (to read the config's plugins again).
    pub run: crate::loading::RunOptions,
}

/// The config's plugins: component file (absolute) → plugin names.
fn config_plugins(options: &crate::loading::RunOptions) -> Option<BTreeMap<PathBuf, Vec<String>>> {
    let loaded = crate::loading::load_config(options).ok()?;
    let mut map: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for (name, path, ..) in loaded.plugin_envs(options.plugin_dir.as_deref()) {
        map.entry(absolute(&path)).or_default().push(name);
    }
    Some(map)
}

/// A plugin the config runs, with the source that builds it.
#[derive(Debug, Clone)]
struct Target {
    source: Source,
    /// The config's component file for it.
    output: PathBuf,
    /// The plugin names the config gives that file.
    plugins: Vec<String>,
}

/// Pair the config's plugins with their sources: the source whose
/// component file name is the config's file name for the plugin.
fn targets(sources: &[Source], config: &BTreeMap<PathBuf, Vec<String>>) -> Vec<Target> {
    config
        .iter()
        .filter_map(|(output, plugins)| {
            let file = output.file_name()?.to_str()?;
            let source = sources.iter().find(|s| s.wasm == file)?;
            Some(Target {
                source: source.clone(),
                output: output.clone(),
                plugins: plugins.clone(),
            })
        })
        .collect()
}

/// What the banner says about the watch: which plugins are rebuilt on
/// save, and which the config runs without a source found.
pub fn describe(options: &WatchOptions) -> String {
    let sources = discover(&options.root);
    let config = config_plugins(&options.run).unwrap_or_default();
    let targets = targets(&sources, &config);
    let mut watched: Vec<String> = targets
        .iter()
        .map(|t| {
            format!(
                "{} ({})",
                t.plugins.join("/"),
                t.source
                    .dir
                    .strip_prefix(&options.root)
                    .unwrap_or(&t.source.dir)
                    .display()
            )
        })
        .collect();
    watched.sort();
    let unmatched: Vec<String> = config
        .iter()
        .filter(|(out, _)| !targets.iter().any(|t| &t.output == *out))
        .flat_map(|(_, names)| names.clone())
        .collect();
    let mut text = format!(
        "save a plugin's source to rebuild and reload it: {}",
        if watched.is_empty() {
            "none found".to_string()
        } else {
            watched.join(", ")
        }
    );
    if !unmatched.is_empty() {
        text.push_str(&format!(
            "; no source under plugins/ for {} (its file is still reloaded when it changes)",
            unmatched.join(", ")
        ));
    }
    text
}

/// A failure that stands until the plugin builds and reloads again.
#[derive(Debug, Clone)]
struct Failing {
    what: &'static str,
    since: chrono::DateTime<chrono::Local>,
}

/// `names` fails now for `what`; since when it first failed is kept.
fn mark_failing(failing: &mut BTreeMap<String, Failing>, names: &str, what: &'static str) {
    failing
        .entry(names.to_string())
        .or_insert_with(|| Failing {
            what,
            since: chrono::Local::now(),
        })
        .what = what;
}

/// Watch the sources and rebuild until `stop` resolves. Lines go to
/// standard error, with the router's log.
pub async fn run(
    options: WatchOptions,
    reports: broadcast::Sender<ReloadReport>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    // Each file event carries when it happened: a save made while a build
    // runs waits in the queue, and its save → serving counts that wait.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, notify::Result<notify::Event>)>();
    let mut watcher = match notify::recommended_watcher(move |res| {
        let _ = tx.send((Instant::now(), res));
    }) {
        Ok(w) => w,
        Err(e) => {
            say(&format!(
                "cannot watch the plugin sources ({e}); rebuild with `switchyard plugin build` instead"
            ));
            return;
        }
    };
    for dir in ["plugins", "wit"] {
        let path = options.root.join(dir);
        if let Err(e) = watcher.watch(&path, RecursiveMode::Recursive) {
            say(&format!(
                "cannot watch {} ({e}); rebuild with `switchyard plugin build` instead",
                path.display()
            ));
        }
    }
    let mut failing: BTreeMap<String, Failing> = BTreeMap::new();
    let mut config = config_plugins(&options.run).unwrap_or_default();
    loop {
        let first = tokio::select! {
            _ = &mut stop => return,
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let mut changes = BTreeSet::new();
        let (saved, first) = first;
        collect(&options.root, first, &mut changes);
        if changes.is_empty() {
            continue;
        }
        loop {
            match tokio::time::timeout(QUIET, rx.recv()).await {
                Ok(Some((_, ev))) => collect(&options.root, ev, &mut changes),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        // The config may have gained or lost plugins since.
        if let Some(now) = config_plugins(&options.run) {
            config = now;
        }
        let sources = discover(&options.root);
        let targets = targets(&sources, &config);
        let chosen = chosen(&changes, &sources, &targets);
        for dir in &chosen.unrouted {
            say(&format!(
                "{} changed; the routing config runs no plugin from it, so it is not rebuilt (add it to {} to run it)",
                rel(&options.root, dir),
                options.run.config.display()
            ));
        }
        if chosen.targets.is_empty() {
            continue;
        }
        let mut rx_reports = reports.subscribe();
        for target in &chosen.targets {
            rebuild(&options, target, saved, &mut rx_reports, &mut failing).await;
        }
        for (name, f) in &failing {
            say(&format!(
                "still failing: {name} ({}, since {}); the previous build serves",
                f.what,
                f.since.format("%H:%M:%S")
            ));
        }
    }
}

/// The targets a set of changes rebuilds, and the changed plugin
/// directories the config does not run.
struct Chosen {
    targets: Vec<Target>,
    unrouted: Vec<PathBuf>,
}

fn chosen(changes: &BTreeSet<ChangeKey>, sources: &[Source], targets: &[Target]) -> Chosen {
    let mut picked: Vec<Target> = Vec::new();
    let mut unrouted = Vec::new();
    let mut add = |t: &Target| {
        if !picked.iter().any(|p| p.output == t.output) {
            picked.push(t.clone());
        }
    };
    for change in changes {
        match change {
            ChangeKey::Wit => targets.iter().for_each(&mut add),
            ChangeKey::Sdk(lang) => targets
                .iter()
                .filter(|t| t.source.lang == *lang)
                .for_each(&mut add),
            ChangeKey::Plugin(dir) => {
                let matching: Vec<&Target> =
                    targets.iter().filter(|t| &t.source.dir == dir).collect();
                if matching.is_empty() {
                    if sources.iter().any(|s| &s.dir == dir) {
                        unrouted.push(dir.clone());
                    }
                } else {
                    matching.into_iter().for_each(&mut add);
                }
            }
        }
    }
    Chosen {
        targets: picked,
        unrouted,
    }
}

/// [`Change`], ordered, for a set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ChangeKey {
    Wit,
    Sdk(Lang),
    Plugin(PathBuf),
}

fn collect(root: &Path, ev: notify::Result<notify::Event>, changes: &mut BTreeSet<ChangeKey>) {
    let Ok(ev) = ev else {
        return;
    };
    if ev.kind.is_access() {
        return;
    }
    for path in &ev.paths {
        match classify(root, path) {
            Some(Change::Wit) => changes.insert(ChangeKey::Wit),
            Some(Change::Sdk(l)) => changes.insert(ChangeKey::Sdk(l)),
            Some(Change::Plugin(d)) => changes.insert(ChangeKey::Plugin(d)),
            None => false,
        };
    }
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn say(line: &str) {
    eprintln!("[watch] {line}");
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Build one target and follow its reload; print the line.
async fn rebuild(
    options: &WatchOptions,
    target: &Target,
    saved: Instant,
    reports: &mut broadcast::Receiver<ReloadReport>,
    failing: &mut BTreeMap<String, Failing>,
) {
    let names = target.plugins.join("/");
    let before = std::fs::read(&target.output).ok();
    let started = Instant::now();
    let built = build(&options.root, target).await;
    let build_time = started.elapsed();
    if let Err(output) = built {
        mark_failing(failing, &names, "build error");
        say(&format!(
            "{names}: build FAILED in {}; the previous build still serves. Fix it and save again:\n{}",
            secs(build_time),
            indent(&output)
        ));
        return;
    }
    let after = std::fs::read(&target.output).ok();
    if after.is_some() && after == before {
        // A build error is fixed; a refused reload of these same bytes is
        // not (the reloader refuses them again).
        if failing.get(&names).is_some_and(|f| f.what == "build error") {
            failing.remove(&names);
        }
        say(&format!(
            "{names}: built in {}; the component did not change, nothing to reload",
            secs(build_time)
        ));
        return;
    }
    // Each plugin name on the file reloads; the first report for any of
    // them says how it went.
    let waited = tokio::time::timeout(RELOAD_WAIT, async {
        loop {
            match reports.recv().await {
                Ok(report) => {
                    if let Some(line) = reload_line(&names, &target.plugins, &report) {
                        return Some((line, report));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await;
    match waited {
        Ok(Some((line, report))) => {
            let ok = !matches!(report, ReloadReport::Refused { .. });
            if ok {
                if failing.remove(&names).is_some() {
                    say(&format!("{names}: fixed"));
                }
                say(&format!(
                    "{names}: rebuilt in {}; {line}; save → serving {}",
                    secs(build_time),
                    secs(saved.elapsed())
                ));
            } else {
                mark_failing(failing, &names, "reload refused");
                say(&format!(
                    "{names}: built in {}, but {line}",
                    secs(build_time)
                ));
            }
        }
        Ok(None) => {}
        Err(_) => say(&format!(
            "{names}: built in {}, but no reload followed within {} s; is {} the file the config names?",
            secs(build_time),
            RELOAD_WAIT.as_secs(),
            target.output.display()
        )),
    }
}

/// The line for a reload report about one of `plugins`; `None` for
/// reports about other plugins.
fn reload_line(names: &str, plugins: &[String], report: &ReloadReport) -> Option<String> {
    match report {
        ReloadReport::Reloaded {
            plugin,
            version,
            hash,
            compile,
            serving_after,
        } if plugins.contains(plugin) => Some(format!(
            "serving {} after the write (compile {}), version {version}, sha256 {hash}",
            secs(*serving_after),
            secs(*compile)
        )),
        ReloadReport::Unchanged { plugin } if plugins.contains(plugin) => {
            Some("the component did not change".to_string())
        }
        ReloadReport::Refused {
            plugin: Some(plugin),
            reason,
            serving,
        } if plugins.contains(plugin) => Some(format!(
            "the reload was REFUSED: {reason}\n  still serving {serving} for {names}; fix it and save again"
        )),
        _ => None,
    }
}

/// A failed build's output, indented: from rustc's first `error` line
/// (its errors come first), else the last lines (a Python traceback or a
/// script's message ends the output), at most [`ERROR_LINES`].
fn indent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let (start, end) = match lines.iter().position(|l| l.starts_with("error")) {
        Some(first) => (first, lines.len().min(first + ERROR_LINES)),
        None => (lines.len().saturating_sub(ERROR_LINES), lines.len()),
    };
    let mut out: Vec<String> = Vec::new();
    if start > 0 && !lines[start].starts_with("error") {
        out.push(format!("  | ... {start} lines before"));
    }
    out.extend(lines[start..end].iter().map(|l| format!("  | {l}")));
    if end < lines.len() {
        out.push(format!("  | ... {} more lines", lines.len() - end));
    }
    out.join("\n")
}

/// Build `target`; `Err` holds the build's output.
async fn build(root: &Path, target: &Target) -> Result<(), String> {
    let out_dir = target
        .output
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    match target.source.lang {
        Lang::Rust => build_rust(root, target).await,
        Lang::TypeScript | Lang::Python => {
            let mut cmd = tokio::process::Command::new(root.join("scripts/build-plugins"));
            cmd.arg(&target.source.dir)
                .current_dir(root)
                .env("SWITCHYARD_PLUGIN_DIR", &out_dir);
            run_captured(cmd).await
        }
    }
}

/// The cargo profile of `dev`'s Rust rebuilds: `plugin` without LTO and
/// with incremental codegen (about 0.6 s instead of 2.4 s for a seed
/// plugin here; the component is a third larger). `switchyard plugin
/// build` makes the `plugin` build again.
const DEV_PROFILE: &str = "plugin-dev";

/// Cargo's output directory for [`DEV_PROFILE`].
fn cargo_dev_dir(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    target.join("wasm32-wasip2").join(DEV_PROFILE)
}

async fn build_rust(root: &Path, target: &Target) -> Result<(), String> {
    let Some(crate_name) = &target.source.crate_name else {
        return Err("no crate name".into());
    };
    let member = rel(root, &target.source.dir);
    if !in_workspace(root, &member) {
        return Err(format!(
            "{member} is a Rust plugin outside the workspace: add \"{member}\" to [workspace] members in {} (`switchyard plugin new` does this)",
            root.join("Cargo.toml").display()
        ));
    }
    let mut cmd = tokio::process::Command::new("cargo");
    cmd.args([
        "build",
        "--target",
        "wasm32-wasip2",
        "--profile",
        DEV_PROFILE,
        "-p",
    ])
    .arg(crate_name)
    .current_dir(root);
    run_captured(cmd).await?;
    let built = cargo_dev_dir(root).join(format!("{}.wasm", crate_name.replace('-', "_")));
    // Into the config's file for it. When that is cargo's own `plugin`
    // output, the next `cargo build --profile plugin` puts the release
    // build back (cargo links its outputs even when they are fresh).
    copy_into_place(&built, &target.output).map_err(|e| {
        format!(
            "{}: copying to {}: {e:#}",
            built.display(),
            target.output.display()
        )
    })
}

/// Whether the workspace's `Cargo.toml` lists `member` (a path such as
/// `plugins/audit-trail`) under `[workspace] members`.
fn in_workspace(root: &Path, member: &str) -> bool {
    std::fs::read_to_string(root.join("Cargo.toml"))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| {
            let members = t.get("workspace")?.get("members")?.as_array()?.clone();
            Some(members.iter().any(|m| m.as_str() == Some(member)))
        })
        .unwrap_or(false)
}

/// Copy `from` to `to` under a temporary name, then rename: the reloader
/// never reads half a file.
fn copy_into_place(from: &Path, to: &Path) -> anyhow::Result<()> {
    let partial = to.with_extension(format!("wasm.partial-{}", std::process::id()));
    std::fs::copy(from, &partial).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, to).with_context(|| format!("renaming to {}", to.display()))?;
    Ok(())
}

async fn run_captured(mut cmd: tokio::process::Command) -> Result<(), String> {
    // The tools' own stack traces (componentize-py is a Rust program)
    // would bury the plugin's error under the tool's frames.
    cmd.stdin(std::process::Stdio::null())
        .env("CARGO_TERM_COLOR", "never")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std().get_program());
    match cmd.output().await {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stdout));
            Err(format!(
                "{}\n({program} exited with {})",
                text.trim_end(),
                out.status
            ))
        }
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = dir.path();
        for (file, text) in [
            (
                "plugins/audit-trail/Cargo.toml",
                "[package]\nname = \"audit-trail\"\n",
            ),
            (
                "plugins/audit-ts/package.json",
                "{\"name\": \"audit-ts\", \"switchyard\": {}}",
            ),
            (
                "plugins/audit-py/pyproject.toml",
                "[project]\nname = \"x\"\n\n[tool.switchyard]\n",
            ),
            ("plugins/not-a-plugin/package.json", "{\"name\": \"x\"}"),
            (
                "plugins/sdk/Cargo.toml",
                "[package]\nname = \"switchyard-plugin\"\n",
            ),
            ("plugins/sdk-ts/package.json", "{\"switchyard\": 1}"),
        ] {
            let path = p.join(file);
            std::fs::create_dir_all(path.parent().unwrap_or(p)).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        }
        dir
    }

    #[test]
    fn plugin_directories_are_found_by_what_they_hold() {
        let dir = checkout();
        let found = discover(dir.path());
        let summary: Vec<(String, Lang, Option<String>)> = found
            .iter()
            .map(|s| (s.wasm.clone(), s.lang, s.crate_name.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("audit_py.wasm".into(), Lang::Python, None),
                (
                    "audit_trail.wasm".into(),
                    Lang::Rust,
                    Some("audit-trail".into())
                ),
                ("audit_ts.wasm".into(), Lang::TypeScript, None),
            ]
        );
    }

    #[test]
    fn only_source_files_count_as_changes() {
        let root = Path::new("/repo");
        let plugin = || Some(Change::Plugin(root.join("plugins/audit-trail")));
        for (path, want) in [
            ("plugins/audit-trail/src/lib.rs", plugin()),
            ("plugins/audit-trail/Cargo.toml", plugin()),
            (
                "plugins/audit-ts/src/plugin.ts",
                Some(Change::Plugin(root.join("plugins/audit-ts"))),
            ),
            (
                "plugins/audit-py/plugin.py",
                Some(Change::Plugin(root.join("plugins/audit-py"))),
            ),
            ("plugins/sdk/src/lib.rs", Some(Change::Sdk(Lang::Rust))),
            (
                "plugins/sdk-ts/src/index.ts",
                Some(Change::Sdk(Lang::TypeScript)),
            ),
            (
                "plugins/sdk-py/switchyard/__init__.py",
                Some(Change::Sdk(Lang::Python)),
            ),
            ("wit/plugin.wit", Some(Change::Wit)),
            // Not sources, or not read by a build.
            ("plugins/sdk-ts/types/plugin.d.ts", None),
            (
                "plugins/audit-ts/src/types/user.ts",
                Some(Change::Plugin(root.join("plugins/audit-ts"))),
            ),
            ("plugins/audit-ts/node_modules/x/index.js", None),
            ("plugins/audit-py/__pycache__/plugin.cpython-311.pyc", None),
            ("plugins/audit-trail/src/.lib.rs.swp", None),
            ("plugins/audit-trail/src/lib.rs~", None),
            ("plugins/audit-trail/src/4913", None),
            ("plugins/audit-trail/examples/example.json", None),
            ("plugins/audit-ts/test/plugin.test.ts", None),
            ("plugins/audit-trail/README.md", None),
            ("plugins/.git/HEAD", None),
            ("config/switchyard.toml", None),
            ("target/wasm32-wasip2/plugin/audit_trail.wasm", None),
        ] {
            assert_eq!(classify(root, &root.join(path)), want, "{path}");
        }
        assert_eq!(
            classify(root, Path::new("/elsewhere/plugins/a/src/lib.rs")),
            None
        );
    }

    #[test]
    fn a_change_rebuilds_what_the_config_runs_from_it() {
        let dir = checkout();
        let root = dir.path();
        let sources = discover(root);
        let out = Path::new("/out");
        let config: BTreeMap<PathBuf, Vec<String>> = [
            (
                out.join("audit_trail.wasm"),
                vec!["audit-trail".to_string()],
            ),
            (
                out.join("audit_ts.wasm"),
                vec!["audit-ts".to_string(), "audit-ts-2".to_string()],
            ),
            (out.join("elsewhere.wasm"), vec!["elsewhere".to_string()]),
        ]
        .into_iter()
        .collect();
        let targets = targets(&sources, &config);
        assert_eq!(targets.len(), 2, "{targets:?}");
        let names =
            |c: &Chosen| -> Vec<String> { c.targets.iter().map(|t| t.plugins.join("/")).collect() };
        let one: BTreeSet<ChangeKey> = [ChangeKey::Plugin(root.join("plugins/audit-trail"))].into();
        assert_eq!(
            names(&chosen(&one, &sources, &targets)),
            vec!["audit-trail"]
        );
        let sdk: BTreeSet<ChangeKey> = [ChangeKey::Sdk(Lang::TypeScript)].into();
        assert_eq!(
            names(&chosen(&sdk, &sources, &targets)),
            vec!["audit-ts/audit-ts-2"]
        );
        let wit: BTreeSet<ChangeKey> = [ChangeKey::Wit].into();
        assert_eq!(chosen(&wit, &sources, &targets).targets.len(), 2);
        // A plugin directory the config does not run is named, not built.
        let py: BTreeSet<ChangeKey> = [ChangeKey::Plugin(root.join("plugins/audit-py"))].into();
        let c = chosen(&py, &sources, &targets);
        assert!(c.targets.is_empty());
        assert_eq!(c.unrouted, vec![root.join("plugins/audit-py")]);
    }

    #[test]
    fn a_crate_outside_the_workspace_is_named_with_the_line_to_add() {
        let dir = checkout();
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[workspace]\nmembers = [\"host\", \"plugins/audit-trail\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(in_workspace(dir.path(), "plugins/audit-trail"));
        assert!(!in_workspace(dir.path(), "plugins/audit-other"));
        assert!(!in_workspace(
            Path::new("/nonexistent"),
            "plugins/audit-trail"
        ));
    }

    #[test]
    fn reports_about_other_plugins_are_not_ours() {
        let plugins = vec!["a".to_string()];
        let other = ReloadReport::Unchanged { plugin: "b".into() };
        assert_eq!(reload_line("a", &plugins, &other), None);
        let refused = ReloadReport::Refused {
            plugin: Some("a".into()),
            reason: "migration 001 changed".into(),
            serving: "the previous build".into(),
        };
        let line = reload_line("a", &plugins, &refused).unwrap_or_default();
        assert!(line.contains("REFUSED: migration 001 changed"), "{line}");
        assert!(line.contains("still serving the previous build"), "{line}");
    }

    #[test]
    fn a_failed_build_shows_its_errors_first() {
        let mut out = String::from("   Compiling x v0.1.0\n");
        out.push_str("error[E0425]: cannot find value `y`\n --> src/lib.rs:3:5\n");
        let shown = indent(&out);
        assert!(shown.starts_with("  | error[E0425]"), "{shown}");
        let long: String = (0..100).map(|i| format!("error line {i}\n")).collect();
        let shown = indent(&long);
        assert!(shown.ends_with("... 40 more lines"), "{shown}");
        // A traceback: its end says what went wrong.
        let mut traceback: String = (0..100).map(|i| format!("  frame {i}\n")).collect();
        traceback.push_str("SyntaxError: invalid syntax\n");
        let shown = indent(&traceback);
        assert!(shown.starts_with("  | ... 41 lines before"), "{shown}");
        assert!(
            shown.ends_with("  | SyntaxError: invalid syntax"),
            "{shown}"
        );
    }
}
