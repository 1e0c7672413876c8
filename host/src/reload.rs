//! Hot reload: watch the plugin files and the routing config, and swap in
//! a new version when one changes on disk — or keep the running one and
//! say why when the new one is not good.
//!
//! - **Plugins.** The directories holding the plugin files are watched
//!   (not the files: `cargo build` and editors replace files by removing,
//!   linking or renaming). After a change, events are debounced until the
//!   directory is quiet for [`DEBOUNCE`]; the file is read and hashed,
//!   compiled on a blocking thread, checked against the plugin world and
//!   started once (`describe`); its new migrations are applied; then the
//!   route/plugin table is swapped whole. Lanes pick the new version up at
//!   their next event; an event in progress finishes on the version it
//!   started with; order per partition is untouched.
//! - **Config.** Routes, grants, limits and plugin settings swap together.
//!   Topics that appear are subscribed and topics that disappear dropped
//!   (one `subscribe` call; committed offsets stay with the group). A
//!   plugin whose file did not change keeps its compiled code.
//!   `[kafka]`, `[database]`, `[dead_letter]`, `[retry]` and `[runtime]`
//!   need a restart; a change there is logged, not applied.
//! - **Failures** (truncated or half-written file, a core module, the
//!   wrong world, a start function that traps, bad TOML, a route to an
//!   unknown plugin) log the file and the reason, count in
//!   `reload_failures`, and leave the running version in service.

use crate::config::Loaded;
use crate::consumer::RouterConsumer;
use crate::loading::{RunOptions, load_config};
use crate::pipeline::{PluginSlot, RouterState, Shared};
use crate::routes::RouteTable;
use crate::runtime::{Runtime, short_hash};
use notify::{RecursiveMode, Watcher};
use rdkafka::consumer::Consumer;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Quiet time after the last file event before a reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Longest wait for a quiet spell: a file rewritten without pause is
/// reloaded anyway (and reloaded again after its next change).
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// What became of one reload, for whoever follows them (`dev`'s source
/// watcher prints a line per rebuild from these).
#[derive(Debug, Clone)]
pub enum ReloadReport {
    /// A new build of `plugin` is serving.
    Reloaded {
        /// The plugin's name in the routing config.
        plugin: String,
        /// Its version and short hash.
        version: String,
        /// Short SHA-256 of the component.
        hash: String,
        /// Compile time (0 when the compiled-code cache had it).
        compile: Duration,
        /// From the first file event to serving.
        serving_after: Duration,
    },
    /// `plugin`'s file changed on disk but holds the bytes already serving.
    Unchanged {
        /// The plugin's name.
        plugin: String,
    },
    /// A reload was refused; the running version stays.
    Refused {
        /// The plugin's name, or `None` for the config.
        plugin: Option<String>,
        /// Why.
        reason: String,
        /// What is still serving.
        serving: String,
    },
    /// The config was reloaded (every plugin file reread).
    Config {
        /// From the first file event to serving.
        serving_after: Duration,
    },
}

/// How often a refused reload that still stands is logged again.
const REFUSED_REMINDER: Duration = Duration::from_secs(60);

/// The reloader's view of what is running.
pub struct Reloader {
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    consumer: Arc<RouterConsumer>,
    options: RunOptions,
    loaded: Loaded,
    /// Absolute path of the config file.
    config_path: PathBuf,
    /// Plugin name → absolute path of its file.
    files: HashMap<String, PathBuf>,
    /// Where reports go, if anyone listens.
    reports: Option<tokio::sync::broadcast::Sender<ReloadReport>>,
}

/// `dir.canonicalize() / file_name`: stable even while the file itself is
/// being replaced.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

impl Reloader {
    /// A reloader for the router `shared` runs.
    pub fn new(
        shared: Arc<Shared>,
        runtime: Arc<Runtime>,
        consumer: Arc<RouterConsumer>,
        options: RunOptions,
        loaded: Loaded,
    ) -> Self {
        let config_path = absolute(&options.config);
        let files = Self::plugin_files(&loaded, &options);
        let reports = options.reload_reports.clone();
        Self {
            shared,
            runtime,
            consumer,
            options,
            loaded,
            config_path,
            files,
            reports,
        }
    }

    fn plugin_files(loaded: &Loaded, options: &RunOptions) -> HashMap<String, PathBuf> {
        loaded
            .plugin_envs(options.plugin_dir.as_deref())
            .into_iter()
            .map(|(name, path, ..)| (name, absolute(&path)))
            .collect()
    }

    fn watched_dirs(&self) -> BTreeSet<PathBuf> {
        std::iter::once(&self.config_path)
            .chain(self.files.values())
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect()
    }

    /// Watch and reload until `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        let mut watcher = match notify::recommended_watcher(move |res| {
            let _ = tx.send(res);
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch files: hot reload is off; restart to pick up changes");
                return;
            }
        };
        let mut watching: BTreeSet<PathBuf> = BTreeSet::new();
        self.rewatch(&mut watcher, &mut watching);
        let mut reminder = tokio::time::interval(REFUSED_REMINDER);
        reminder.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reminder.reset();
        loop {
            // Only the config and the plugin files matter: the directories
            // may hold busy files too (logs, a SQLite database).
            let interesting = self.interesting();
            let first = tokio::select! {
                _ = &mut stop => return,
                _ = reminder.tick() => {
                    self.remind();
                    continue;
                }
                ev = rx.recv() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
            };
            let mut paths: HashSet<PathBuf> = HashSet::new();
            collect(&mut paths, first, &interesting);
            if paths.is_empty() {
                continue;
            }
            let since = Instant::now();
            // Debounce: a build or an editor writes in several steps. Wait
            // until the files we care about are quiet for DEBOUNCE (other
            // files' events do not count), but never longer than
            // MAX_DEBOUNCE.
            let mut last = since;
            loop {
                let quiet_left = DEBOUNCE.saturating_sub(last.elapsed());
                if quiet_left.is_zero() || since.elapsed() >= MAX_DEBOUNCE {
                    break;
                }
                match tokio::time::timeout(quiet_left, rx.recv()).await {
                    Ok(Some(ev)) => {
                        if collect(&mut paths, ev, &interesting) {
                            last = Instant::now();
                        }
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            tracing::debug!(?paths, "files changed");
            self.apply(&paths, since).await;
            self.rewatch(&mut watcher, &mut watching);
        }
    }

    fn interesting(&self) -> HashSet<PathBuf> {
        std::iter::once(self.config_path.clone())
            .chain(self.files.values().cloned())
            .collect()
    }

    fn rewatch(&self, watcher: &mut notify::RecommendedWatcher, watching: &mut BTreeSet<PathBuf>) {
        let wanted = self.watched_dirs();
        for dir in watching.difference(&wanted) {
            let _ = watcher.unwatch(dir);
        }
        for dir in wanted.difference(watching) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; changes there need a restart");
            } else {
                tracing::debug!(dir = %dir.display(), "watching for changes");
            }
        }
        *watching = wanted;
    }

    /// Reload what `paths` touch: the whole config if it changed (which
    /// also rereads every plugin file), else each changed plugin.
    pub async fn apply(&mut self, paths: &HashSet<PathBuf>, since: Instant) {
        if paths.contains(&self.config_path) {
            self.reload_config(since).await;
            return;
        }
        let mut names: Vec<String> = self
            .files
            .iter()
            .filter(|(_, f)| paths.contains(*f))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        for name in names {
            self.reload_plugin(&name, since).await;
        }
    }

    fn report(&self, report: ReloadReport) {
        if let Some(tx) = &self.reports {
            // Nobody listening is fine.
            let _ = tx.send(report);
        }
    }

    /// What is serving instead of a refused `what`.
    fn serving(&self, what: &str) -> String {
        let state = self.shared.state.load_full();
        match what
            .strip_prefix("plugin ")
            .and_then(|n| state.plugins.get(n))
        {
            Some(slot) => format!(
                "the previous build, version {} (sha256 {})",
                slot.plugin.info.version, slot.plugin.hash
            ),
            None => "the previous config and its plugins".to_string(),
        }
    }

    fn refused(&self, what: &str, file: &Path, reason: &str) {
        let kind = if what == "config" { "config" } else { "plugin" };
        let refused = self.shared.metrics.reload(kind, false);
        let serving = self.serving(what);
        let fix = if what == "config" {
            "fix the config and save it again"
        } else {
            "fix the plugin and build it again"
        };
        tracing::error!(
            file = %file.display(),
            %reason,
            reloads_refused = refused,
            "{what} reload refused; STILL SERVING {serving}, not what is on disk; {fix} (/health lists this until a reload of it takes)"
        );
        self.shared
            .metrics
            .reload_refused(switchyard_core::metrics::RefusedReload {
                what: what.to_string(),
                file: file.display().to_string(),
                reason: reason.to_string(),
                serving: serving.clone(),
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            });
        self.report(ReloadReport::Refused {
            plugin: what.strip_prefix("plugin ").map(str::to_string),
            reason: reason.to_string(),
            serving,
        });
    }

    /// Log again every refusal that still stands: an older build serving
    /// (and perhaps dead-lettering) is easy to miss in a long log.
    fn remind(&self) {
        for r in self.shared.metrics.refused_reloads() {
            tracing::warn!(
                file = %r.file,
                reason = %r.reason,
                refused_at = %r.at,
                "{} reload still refused since {}: still serving {}",
                r.what,
                r.at,
                r.serving
            );
        }
    }

    async fn reload_plugin(&mut self, name: &str, since: Instant) {
        let Some(path) = self.files.get(name).cloned() else {
            return;
        };
        let state = self.shared.state.load_full();
        let Some(slot) = state.plugins.get(name).cloned() else {
            return;
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                // Removed or half-replaced: the next event on the file
                // (the rest of the write) triggers another try.
                tracing::debug!(plugin = %name, file = %path.display(), error = %e, "plugin file not readable yet");
                return;
            }
        };
        let hash = short_hash(&bytes);
        if hash == slot.plugin.hash {
            tracing::debug!(plugin = %name, %hash, "plugin file touched but unchanged");
            // What is on disk is what serves: a refusal no longer stands.
            self.shared
                .metrics
                .reload_applied(&format!("plugin {name}"));
            self.report(ReloadReport::Unchanged {
                plugin: name.to_string(),
            });
            return;
        }
        let loaded = match self
            .runtime
            .load_bytes(
                bytes,
                path.display().to_string(),
                (*slot.plugin.env).clone(),
            )
            .await
        {
            Ok(p) => p,
            Err(e) => return self.refused(&format!("plugin {name}"), &path, &e.to_string()),
        };
        let loaded =
            match crate::loading::prepare_plugin(&self.shared.db, &self.runtime, &loaded).await {
                Ok(p) => p,
                Err(e) => return self.refused(&format!("plugin {name}"), &path, &format!("{e:#}")),
            };
        let mut next = (*self.shared.state.load_full()).clone();
        next.plugins.insert(
            name.to_string(),
            PluginSlot {
                plugin: loaded.clone(),
                isolation: slot.isolation,
                breaker: slot.breaker,
            },
        );
        self.shared.state.store(Arc::new(next));
        let reloads = self.shared.metrics.reload("plugin", true);
        self.shared
            .metrics
            .reload_applied(&format!("plugin {name}"));
        self.report(ReloadReport::Reloaded {
            plugin: name.to_string(),
            version: loaded.info.version.clone(),
            hash: loaded.hash.clone(),
            compile: loaded.compile_time,
            serving_after: since.elapsed(),
        });
        tracing::info!(
            reloads,
            plugin = %name,
            old_version = %slot.plugin.info.version,
            old_hash = %slot.plugin.hash,
            new_version = %loaded.info.version,
            new_hash = %loaded.hash,
            compile_ms = loaded.compile_time.as_millis() as u64,
            compiled = loaded.compiled.as_str(),
            serving_after_ms = since.elapsed().as_millis() as u64,
            "plugin reloaded"
        );
    }

    async fn reload_config(&mut self, since: Instant) {
        let options = self.options.clone();
        let loaded = match load_config(&options) {
            Ok(l) => l,
            Err(e) => return self.refused("config", &self.config_path.clone(), &format!("{e:#}")),
        };
        let old = &self.loaded.config;
        let new = &loaded.config;
        for (section, changed) in [
            ("[kafka]", old.kafka != new.kafka),
            ("[database]", old.database != new.database),
            (
                "[dead_letter]",
                old.dead_letter.topic != new.dead_letter.topic,
            ),
            ("[retry]", old.retry != new.retry),
            ("[runtime]", old.runtime != new.runtime),
        ] {
            if changed {
                tracing::warn!(
                    section,
                    "this section changed; it takes effect at the next restart"
                );
            }
        }

        // `[kafka]` takes effect at the next restart: until then the
        // running producer's `message.max.bytes` bounds the publish caps,
        // so the new config's plugins are read with the running section
        // (kept for the next reload to compare with, too).
        let mut loaded = loaded;
        loaded.config.kafka = self.loaded.config.kafka.clone();
        let current = self.shared.state.load_full();
        let mut plugins = HashMap::new();
        for (name, path, env, isolation, breaker) in
            loaded.plugin_envs(options.plugin_dir.as_deref())
        {
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    return self.refused(
                        "config",
                        &self.config_path.clone(),
                        &format!("plugin {name}: cannot read {}: {e}", path.display()),
                    );
                }
            };
            let hash = short_hash(&bytes);
            let reuse = current
                .plugins
                .get(&name)
                .filter(|s| s.plugin.hash == hash)
                .map(|s| s.plugin.clone());
            let plugin = match reuse {
                Some(p) if *p.env == env => Ok(p),
                Some(p) => p.with_env(env, &self.runtime),
                None => {
                    self.runtime
                        .load_bytes(bytes, path.display().to_string(), env)
                        .await
                }
            };
            let plugin = match plugin {
                Ok(p) => p,
                Err(e) => {
                    return self.refused(
                        "config",
                        &self.config_path.clone(),
                        &format!("plugin {name}: {e}"),
                    );
                }
            };
            let plugin =
                match crate::loading::prepare_plugin(&self.shared.db, &self.runtime, &plugin).await
                {
                    Ok(p) => p,
                    Err(e) => {
                        return self.refused(
                            "config",
                            &self.config_path.clone(),
                            &format!("plugin {name}: {e:#}"),
                        );
                    }
                };
            plugins.insert(
                name,
                PluginSlot {
                    plugin,
                    isolation,
                    breaker,
                },
            );
        }
        let routes = RouteTable::new(&loaded.config.routes);
        let old_topics: BTreeSet<String> = current.routes.topics().into_iter().collect();
        let new_topics: BTreeSet<String> = routes.topics().into_iter().collect();
        if old_topics != new_topics {
            let refs: Vec<&str> = new_topics.iter().map(String::as_str).collect();
            if let Err(e) = self.consumer.subscribe(&refs) {
                return self.refused(
                    "config",
                    &self.config_path.clone(),
                    &format!("cannot subscribe to {}: {e}", refs.join(", ")),
                );
            }
            let added: Vec<&String> = new_topics.difference(&old_topics).collect();
            let dropped: Vec<&String> = old_topics.difference(&new_topics).collect();
            tracing::info!(?added, ?dropped, "subscription changed");
        }
        self.shared
            .state
            .store(Arc::new(RouterState { routes, plugins }));
        self.shared.metrics.reload("config", true);
        self.shared.metrics.reload_applied("config");
        self.report(ReloadReport::Config {
            serving_after: since.elapsed(),
        });
        self.files = Self::plugin_files(&loaded, &options);
        self.loaded = loaded;
        tracing::info!(
            file = %self.config_path.display(),
            serving_after_ms = since.elapsed().as_millis() as u64,
            "config reloaded"
        );
    }
}

/// Add the interesting paths of `ev` to `paths`; `true` if it had any.
fn collect(
    paths: &mut HashSet<PathBuf>,
    ev: notify::Result<notify::Event>,
    interesting: &HashSet<PathBuf>,
) -> bool {
    match ev {
        // Reading a file (ours included) is not a change.
        Ok(ev) if ev.kind.is_access() => false,
        Ok(ev) => {
            let before = paths.len();
            let mut hit = false;
            for p in ev.paths.iter().map(|p| absolute(p)) {
                if interesting.contains(&p) {
                    tracing::trace!(kind = ?ev.kind, path = %p.display(), "file event");
                    hit = true;
                    paths.insert(p);
                }
            }
            hit || paths.len() > before
        }
        Err(e) => {
            tracing::warn!(error = %e, "file watcher error");
            false
        }
    }
}
