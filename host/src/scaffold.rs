//! `switchyard plugin new`: a new plugin in Rust, TypeScript or Python,
//! ready to build, test and run: its package, a handler that decodes an
//! event, writes a row and publishes a message, migrations for both
//! backends, an example event, and a unit test.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A `cdylib` crate on the Rust SDK (`plugins/sdk`).
    Rust,
    /// A package on the TypeScript SDK (`plugins/sdk-ts`).
    Ts,
    /// A module on the Python SDK (`plugins/sdk-py`).
    Python,
}

impl Lang {
    /// `rust`, `typescript` or `python`.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Ts => "typescript",
            Lang::Python => "python",
        }
    }
}

/// What `plugin new` made.
#[derive(Debug)]
pub struct Created {
    /// The plugin's directory.
    pub dir: PathBuf,
    /// The files written, relative to the repository.
    pub files: Vec<PathBuf>,
    /// Whether the workspace's Cargo.toml gained the crate.
    pub workspace_member_added: bool,
}

/// The repository root above `start`: the directory with `wit/plugin.wit`
/// and `plugins/`.
pub fn repo_root(start: &Path) -> anyhow::Result<PathBuf> {
    let start = std::fs::canonicalize(start)
        .with_context(|| format!("{}: cannot resolve", start.display()))?;
    start
        .ancestors()
        .find(|d| d.join("wit/plugin.wit").is_file() && d.join("plugins").is_dir())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "{} is not inside a Switchyard checkout (no wit/plugin.wit and plugins/ above it): run this from the repository",
                start.display()
            )
        })
}

/// Check a plugin name: lower-case letters, digits and `-`, starting with
/// a letter, as the routing config and the database role want.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !ok {
        bail!(
            "{name:?} is not a plugin name: use lower-case letters, digits and single dashes, starting with a letter, 48 characters at most (for example `audit-trail`)"
        );
    }
    if ["sdk", "sdk-ts", "sdk-py"].contains(&name) {
        bail!("{name:?} is the name of an SDK directory: choose another");
    }
    if name == "switchyard" || name.starts_with("switchyard-") {
        bail!(
            "{name:?} is taken by the host's and the SDK's crates (switchyard-*): choose another"
        );
    }
    Ok(())
}

/// Make `plugins/<name>` under `root` for `lang`.
pub fn create(root: &Path, name: &str, lang: Lang) -> anyhow::Result<Created> {
    check_name(name)?;
    let dir = root.join("plugins").join(name);
    if dir.exists() {
        bail!(
            "{} already exists: choose another name or remove it",
            dir.display()
        );
    }
    let snake = name.replace('-', "_");
    let fill = |t: &str| t.replace("{{name}}", name).replace("{{snake}}", &snake);
    let files: Vec<(&str, String)> = match lang {
        Lang::Rust => vec![
            ("Cargo.toml", fill(RUST_CARGO)),
            ("src/lib.rs", fill(RUST_LIB)),
        ],
        Lang::Ts => vec![
            ("package.json", fill(TS_PACKAGE)),
            ("tsconfig.json", fill(TS_CONFIG)),
            ("src/plugin.ts", fill(TS_PLUGIN)),
            ("src/logic.ts", fill(TS_LOGIC)),
            ("test/logic.test.ts", fill(TS_TEST)),
        ],
        Lang::Python => vec![
            ("pyproject.toml", fill(PY_PROJECT)),
            ("app.py", fill(PY_APP)),
            ("logic.py", fill(PY_LOGIC)),
            ("test_logic.py", fill(PY_TEST)),
        ],
    };
    let mut written = Vec::new();
    for (file, text) in files
        .into_iter()
        .chain([("examples/example.json", fill(EXAMPLE_EVENT))])
    {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
        written.push(Path::new("plugins").join(name).join(file));
    }
    let workspace_member_added = if lang == Lang::Rust {
        add_workspace_member(&root.join("Cargo.toml"), &format!("plugins/{name}"))?
    } else {
        false
    };
    Ok(Created {
        dir,
        files: written,
        workspace_member_added,
    })
}

/// Add `member` to `[workspace] members` of `cargo_toml`, after the last
/// `plugins/` member; false when it is there already.
fn add_workspace_member(cargo_toml: &Path, member: &str) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(cargo_toml)
        .with_context(|| format!("{}: cannot read", cargo_toml.display()))?;
    let quoted = format!("\"{member}\"");
    if text.contains(&quoted) {
        return Ok(false);
    }
    let lines: Vec<&str> = text.lines().collect();
    let Some(last) = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("\"plugins/"))
    else {
        bail!(
            "{}: no `plugins/` member in [workspace] members to add {quoted} after: add it by hand",
            cargo_toml.display()
        );
    };
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    out.insert(last + 1, format!("    {quoted},"));
    let mut joined = out.join("\n");
    if text.ends_with('\n') {
        joined.push('\n');
    }
    std::fs::write(cargo_toml, joined)
        .with_context(|| format!("{}: cannot write", cargo_toml.display()))?;
    Ok(true)
}

/// What to add to the routing config to run the new plugin.
pub fn config_snippet(name: &str) -> String {
    let snake = name.replace('-', "_");
    format!(
        "[plugins.{name}]\nfile = \"{snake}.wasm\"\npublish = [\"{name}.recorded\"]\n\n[[routes]]\ntopics = [\"{name}.in\"]\nplugins = [\"{name}\"]\ndedupe = {{ field = \"/id\" }}\n"
    )
}

const EXAMPLE_EVENT: &str = r#"{
  "topic": "{{name}}.in",
  "key": "item-1",
  "headers": {"event-id": "evt-1", "content-type": "application/json"},
  "value": {"id": "evt-1", "item": "item-1", "note": "first note", "at": "2026-11-30T09:30:00Z"}
}
"#;

const RUST_CARGO: &str = r#"[package]
name = "{{name}}"
version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
switchyard-plugin = { path = "../sdk" }
serde.workspace = true
serde_json.workspace = true

[lints]
workspace = true
"#;

const RUST_LIB: &str = r#"//! # {{name}}
//!
//! `{{name}}.in` `{id, item, note, at}`: records the note in
//! `{{snake}}_notes` (once per event id) and publishes
//! `{{name}}.recorded` `{item, note}` keyed by the item. A missing or blank
//! `item` or `note`, or an `at` that is no RFC 3339 instant, is rejected.

use serde::Deserialize;
use switchyard_plugin::{
    Event, Flow, Outcome, PluginInfo, db, log, portable_migration, publish, rejected,
};

/// One text for PostgreSQL and SQLite.
const NOTES: &str = "CREATE TABLE IF NOT EXISTS {{snake}}_notes (
    id   TEXT NOT NULL PRIMARY KEY,
    item TEXT NOT NULL,
    note TEXT NOT NULL,
    at   TIMESTAMPTZ NOT NULL
)";

#[derive(Debug, Deserialize)]
struct Note {
    id: String,
    item: String,
    note: String,
    at: String,
}

/// The checks that need no database: a unit test runs them.
fn check(note: &Note) -> Result<(), String> {
    if note.item.trim().is_empty() {
        return Err("item is empty".into());
    }
    if note.note.trim().is_empty() {
        return Err("note is empty".into());
    }
    Ok(())
}

fn handle(ev: &Event) -> Flow<Outcome> {
    let note: Note = ev.json()?;
    check(&note).map_err(|e| rejected(format!("{}: {e}", ev.topic)))?;
    let at = db::timestamp(&note.at).ok_or_else(|| {
        rejected(format!("{}: at {:?} is not an RFC 3339 instant", ev.topic, note.at))
    })?;
    let inserted = db::exec(
        "INSERT INTO {{snake}}_notes (id, item, note, at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        &[note.id.as_str().into(), note.item.as_str().into(), note.note.as_str().into(), at],
    )?;
    if inserted == 0 {
        return Ok(switchyard_plugin::skipped(format!("note {} already recorded", note.id)));
    }
    publish::json(
        "{{name}}.recorded",
        Some(&note.item),
        &serde_json::json!({"item": note.item, "note": note.note}),
    )?;
    log::info(&format!("note {} recorded for {}", note.id, note.item));
    Ok(Outcome::Done)
}

struct Plugin;

impl switchyard_plugin::Guest for Plugin {
    fn describe() -> PluginInfo {
        switchyard_plugin::info(
            "{{name}}",
            env!("CARGO_PKG_VERSION"),
            vec![portable_migration("0001-create-notes", NOTES)],
        )
    }

    fn handle(ev: Event) -> Outcome {
        switchyard_plugin::run(|| handle(&ev))
    }
}

switchyard_plugin::export_plugin!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn note(item: &str, text: &str) -> Note {
        Note { id: "e".into(), item: item.into(), note: text.into(), at: String::new() }
    }

    #[test]
    fn blank_items_and_notes_are_refused() {
        assert!(check(&note("item-1", "hello")).is_ok());
        assert_eq!(check(&note(" ", "hello")), Err("item is empty".to_string()));
        assert_eq!(check(&note("item-1", "")), Err("note is empty".to_string()));
    }
}
"#;

const TS_PACKAGE: &str = r#"{
  "name": "{{name}}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "switchyard": {
    "language": "typescript",
    "entry": "src/plugin.ts"
  }
}
"#;

const TS_CONFIG: &str = r#"{
  "extends": "../sdk-ts/tsconfig.plugin.json",
  "include": ["src/**/*.ts", "../sdk-ts/types/**/*.d.ts"]
}
"#;

const TS_PLUGIN: &str = r#"// {{name}}: `{{name}}.in` `{id, item, note, at}` → a row in
// `{{snake}}_notes` (once per event id) and `{{name}}.recorded` `{item, note}`
// keyed by the item. A blank item or note, or an `at` that is no RFC 3339
// instant, is rejected.
import { plugin, t, db, publish, log, portableMigration, done, skipped, rejected } from "@switchyard/plugin";
import { check } from "./logic.js";

// One text for PostgreSQL and SQLite.
const NOTES = `CREATE TABLE IF NOT EXISTS {{snake}}_notes (
    id   TEXT NOT NULL PRIMARY KEY,
    item TEXT NOT NULL,
    note TEXT NOT NULL,
    at   TIMESTAMPTZ NOT NULL
)`;

const Note = t.object({ id: t.string, item: t.string, note: t.string, at: t.string });

export const { describe, handle } = plugin({
  name: "{{name}}",
  version: "0.1.0",
  migrations: [portableMigration("0001-create-notes", NOTES)],
  handle(ev) {
    const note = ev.json(Note);
    const problem = check(note);
    if (problem !== undefined) return rejected(`${ev.topic}: ${problem}`);
    const inserted = db.exec(
      "INSERT INTO {{snake}}_notes (id, item, note, at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
      [note.id, note.item, note.note, db.timestamp(note.at)],
    );
    if (inserted === 0) return skipped(`note ${note.id} already recorded`);
    publish.json("{{name}}.recorded", note.item, { item: note.item, note: note.note });
    log.info(`note ${note.id} recorded for ${note.item}`);
    return done();
  },
});
"#;

const TS_LOGIC: &str = r#"// The checks that need no database: test/logic.test.ts runs them under
// Node (`node plugins/sdk-ts/build.mjs --test plugins/{{name}}`, the host
// answered by the SDK's fakes).
import { rfc3339Micros } from "@switchyard/plugin";

/** Why a note cannot be recorded, or undefined. */
export function check(note: { item: string; note: string; at: string }): string | undefined {
  if (note.item.trim() === "") return "item is empty";
  if (note.note.trim() === "") return "note is empty";
  if (rfc3339Micros(note.at) === undefined) return `at ${JSON.stringify(note.at)} is not an RFC 3339 instant`;
  return undefined;
}
"#;

const TS_TEST: &str = r#"import { test } from "node:test";
import assert from "node:assert/strict";
import { check } from "../src/logic.js";

test("blank items and notes, and bad instants, are refused", () => {
  const at = "2026-11-30T09:30:00Z";
  assert.equal(check({ item: "item-1", note: "hello", at }), undefined);
  assert.equal(check({ item: " ", note: "hello", at }), "item is empty");
  assert.equal(check({ item: "item-1", note: "", at }), "note is empty");
  assert.match(check({ item: "item-1", note: "hello", at: "yesterday" }) ?? "", /not an RFC 3339 instant/);
});
"#;

const PY_PROJECT: &str = r#"[project]
name = "{{name}}"
version = "0.1.0"
requires-python = ">=3.11"

# scripts/build-plugins builds it with componentize-py: module app.py's
# WitWorld, with plugins/sdk-py on the path.
[tool.switchyard]
language = "python"
module = "app"
"#;

const PY_APP: &str = r#""""{{name}}: ``{{name}}.in`` ``{id, item, note, at}`` → a row in
``{{snake}}_notes`` (once per event id) and ``{{name}}.recorded``
``{item, note}`` keyed by the item. A blank item or note, or an ``at`` that
is no RFC 3339 instant, is rejected."""

from dataclasses import dataclass

from logic import check
from switchyard import Event, Plugin, db, done, log, portable_migration, publish, rejected, skipped

# One text for PostgreSQL and SQLite.
NOTES = """CREATE TABLE IF NOT EXISTS {{snake}}_notes (
    id   TEXT NOT NULL PRIMARY KEY,
    item TEXT NOT NULL,
    note TEXT NOT NULL,
    at   TIMESTAMPTZ NOT NULL
)"""


@dataclass
class Note:
    id: str
    item: str
    note: str
    at: str


class NotePlugin(Plugin):
    name = "{{name}}"
    version = "0.1.0"
    migrations = [portable_migration("0001-create-notes", NOTES)]

    def handle(self, ev: Event):
        note = ev.json(Note)
        problem = check(note.item, note.note)
        if problem is not None:
            return rejected(f"{ev.topic}: {problem}")
        inserted = db.execute(
            "INSERT INTO {{snake}}_notes (id, item, note, at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (id) DO NOTHING",
            note.id, note.item, note.note, db.timestamp(note.at),
        )
        if inserted == 0:
            return skipped(f"note {note.id} already recorded")
        publish.json("{{name}}.recorded", note.item, {"item": note.item, "note": note.note})
        log.info(f"note {note.id} recorded for {note.item}")
        return done()


WitWorld = NotePlugin.world()
"#;

const PY_LOGIC: &str = r#""""The checks that need no database or host: test_logic.py runs them
(``python3 -m unittest discover -s plugins/{{name}}``)."""

from typing import Optional


def check(item: str, note: str) -> Optional[str]:
    """Why a note cannot be recorded, or None."""
    if not item.strip():
        return "item is empty"
    if not note.strip():
        return "note is empty"
    return None
"#;

const PY_TEST: &str = r#"import unittest

from logic import check


class CheckTest(unittest.TestCase):
    def test_blank_items_and_notes_are_refused(self) -> None:
        self.assertIsNone(check("item-1", "hello"))
        self.assertEqual(check(" ", "hello"), "item is empty")
        self.assertEqual(check("item-1", ""), "note is empty")


if __name__ == "__main__":
    unittest.main()
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("audit-trail").is_ok());
        for bad in [
            "",
            "Audit",
            "1x",
            "a_b",
            "a--b",
            "a-",
            "sdk-ts",
            "x y",
            "switchyard-core",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_member_is_added_after_the_last_plugin() {
        let dir = std::env::temp_dir().join(format!("sy-scaffold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let cargo = dir.join("Cargo.toml");
        std::fs::write(
            &cargo,
            "[workspace]\nmembers = [\n    \"host\",\n    \"plugins/a\",\n    \"plugins/b\",\n]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(add_workspace_member(&cargo, "plugins/c").unwrap_or_else(|e| panic!("{e}")));
        assert!(!add_workspace_member(&cargo, "plugins/c").unwrap_or_else(|e| panic!("{e}")));
        let text = std::fs::read_to_string(&cargo).unwrap_or_default();
        assert_eq!(
            text,
            "[workspace]\nmembers = [\n    \"host\",\n    \"plugins/a\",\n    \"plugins/b\",\n    \"plugins/c\",\n]\n"
        );
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    }
}
