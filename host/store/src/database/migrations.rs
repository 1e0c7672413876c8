//! Plugin migrations, and the identity each plugin's SQL runs as: applied
//! once per plugin version, checked by the SQL gate, run as the plugin.

use super::pg_tx::{MIGRATION_TIMEOUT_MS, PluginTxOpened, open_plugin_tx, under_deadline};
use super::*;

/// A plugin migration as the host applies it.
#[derive(Debug, Clone)]
pub struct MigrationSql {
    /// Identifier, unique within the plugin.
    pub id: String,
    /// PostgreSQL script.
    pub postgres: String,
    /// SQLite script.
    pub sqlite: String,
}

impl Database {
    /// Apply the plugin's migrations that have not been applied yet, in
    /// order, each in its own transaction, and record them in
    /// `switchyard_migrations`. Returns the ids applied now.
    ///
    /// On PostgreSQL each migration runs in a session logged in as the
    /// plugin's own role (which is set up first), so what it creates is
    /// the plugin's, and it can do nothing the plugin could not; the record
    /// commits in the same transaction through a guarded host function.
    /// On SQLite the tables a migration created are read from the schema
    /// before and after it and recorded as the plugin's.
    pub async fn migrate(
        &self,
        plugin: &str,
        migrations: &[MigrationSql],
    ) -> Result<Vec<String>, SetupError> {
        let mut applied_now = Vec::new();
        // Tables of the earlier layout become the plugin's first: its new
        // migrations may change them. On PostgreSQL also before the role
        // is provisioned, which takes back the grants of the earlier
        // layout that the upgrade reads as evidence.
        self.adopt_tables(plugin, migrations).await?;
        if let Database::Postgres(pg) = self {
            let identity = pg.provision(plugin).await.map_err(SetupError::Identity)?;
            for m in migrations {
                let checksum = switchyard_core::identity::short_hash(m.postgres.as_bytes());
                if self.already_applied(plugin, m, &checksum).await? {
                    continue;
                }
                refuse_migration(plugin, m, &m.postgres, Backend::Postgres)?;
                if self.migrate_as_plugin(pg, &identity, m, &checksum).await? {
                    applied_now.push(m.id.clone());
                }
            }
            return Ok(applied_now);
        }
        let Database::Sqlite(pool, _) = self else {
            return Ok(applied_now);
        };
        for m in migrations {
            let checksum = switchyard_core::identity::short_hash(m.sqlite.as_bytes());
            if self.already_applied(plugin, m, &checksum).await? {
                continue;
            }
            refuse_migration(plugin, m, &m.sqlite, Backend::Sqlite)?;
            let failed = |source| SetupError::Migration {
                plugin: plugin.to_string(),
                id: m.id.clone(),
                source,
            };
            let mut tx = pool.begin().await.map_err(failed)?;
            let before = sqlite_tables(&mut tx).await.map_err(failed)?;
            let own: Vec<String> = sqlx::query_scalar(
                "SELECT lower(table_name) FROM switchyard_plugin_tables WHERE plugin = $1",
            )
            .bind(plugin)
            .fetch_all(&mut *tx)
            .await
            .map_err(failed)?;
            // The migration runs under the authorizer's migration scope:
            // it may create and change its own tables only (SQLite's
            // stand-in for running as the plugin's role).
            let scope = crate::sqlite_sandbox::MigrationScope::enter(
                &mut tx,
                plugin.into(),
                own.into(),
                before.clone().into(),
            )
            .await
            .map_err(failed)?;
            // A `&str` runs unprepared and uncached: every statement is
            // compiled now, under the scope's authorizer.
            let ran = {
                use sqlx::Executor;
                tx.execute(m.sqlite.as_str()).await
            };
            let denial = scope.denial();
            drop(scope);
            if let Err(e) = ran {
                return Err(match denial {
                    Some(reason) => SetupError::Refused {
                        plugin: plugin.to_string(),
                        id: m.id.clone(),
                        reason,
                    },
                    None => failed(e),
                });
            }
            let after = sqlite_tables(&mut tx).await.map_err(failed)?;
            for table in after.iter().filter(|t| !before.contains(t)) {
                if table.starts_with("switchyard_") {
                    return Err(SetupError::Refused {
                        plugin: plugin.to_string(),
                        id: m.id.clone(),
                        reason: format!("it creates {table}: switchyard_* names are the host's"),
                    });
                }
                sqlx::query(
                    "INSERT INTO switchyard_plugin_tables (plugin, table_name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(plugin)
                .bind(table)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            }
            sqlx::query("INSERT INTO switchyard_migrations (plugin, id, checksum, applied_at, runs_as_plugin) VALUES ($1, $2, $3, $4, 1)")
                .bind(plugin).bind(&m.id).bind(&checksum).bind(chrono::Utc::now().to_rfc3339())
                .execute(&mut *tx).await.map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            applied_now.push(m.id.clone());
        }
        if !applied_now.is_empty() {
            self.refresh_schema().await?;
        }
        Ok(applied_now)
    }

    /// Whether `m` is applied already with this checksum; an error if it
    /// was applied with another.
    pub(crate) async fn already_applied(
        &self,
        plugin: &str,
        m: &MigrationSql,
        checksum: &str,
    ) -> Result<bool, SetupError> {
        match self.migration_checksum(plugin, &m.id).await? {
            Some(applied) if applied == checksum => Ok(true),
            Some(applied) => Err(SetupError::MigrationChanged {
                plugin: plugin.to_string(),
                id: m.id.clone(),
                applied,
                now: checksum.to_string(),
            }),
            None => Ok(false),
        }
    }

    /// One PostgreSQL migration in the plugin's own session. The plugin's
    /// role may create objects in the service schema only while its
    /// migration runs. Returns `false` if another router applied it
    /// meanwhile.
    pub(crate) async fn migrate_as_plugin(
        &self,
        pg: &PgDb,
        identity: &crate::pg_identity::PluginDb,
        m: &MigrationSql,
        checksum: &str,
    ) -> Result<bool, SetupError> {
        use sqlx::Executor;
        let failed = |source| SetupError::Migration {
            plugin: identity.plugin.to_string(),
            id: m.id.clone(),
            source,
        };
        let secret = pg.secret().ok_or_else(|| {
            failed(sqlx::Error::Protocol(
                "switchyard's host functions are not set up".to_string(),
            ))
        })?;
        // The plugin creates in its own schema only (the first of its
        // search_path); migration_done refuses anything but tables and
        // their kin and moves the tables to the service schema.
        let PluginTxOpened { mut tx, xid, .. } =
            open_plugin_tx(&identity.pool, MIGRATION_TIMEOUT_MS)
                .await
                .map_err(failed)?;
        let recorded: Option<String> = sqlx::query_scalar(&format!(
            "SELECT {}.migration_begin($1, $2, $3, $4)",
            crate::pg_identity::HOST_SCHEMA
        ))
        .bind(&*secret)
        .bind(&xid)
        .bind(&*identity.plugin)
        .bind(&m.id)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
        if recorded.is_some() {
            tx.rollback().await.map_err(failed)?;
            return Ok(false);
        }
        // The script is several statements: the simple protocol, under a
        // deadline of the host's (a statement_timeout the script lifted
        // does not keep start-up or a reload waiting).
        let mut lost = false;
        let ran = under_deadline(
            pg,
            Some((identity.role.as_str().into(), MIGRATION_TIMEOUT_MS)),
            &mut lost,
            async { tx.execute(m.postgres.as_str()).await.map_err(map_error) },
        )
        .await;
        if let Err(e) = ran {
            let _ = tx.rollback().await;
            return Err(SetupError::Refused {
                plugin: identity.plugin.to_string(),
                id: m.id.clone(),
                reason: e.to_string(),
            });
        }
        sqlx::query(&format!(
            "SELECT {}.migration_done($1, $2, $3, $4, $5)",
            crate::pg_identity::HOST_SCHEMA
        ))
        .bind(&*secret)
        .bind(&xid)
        .bind(&*identity.plugin)
        .bind(&m.id)
        .bind(checksum)
        .persistent(false)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(true)
    }

    /// The plugin's database identity once its migrations are applied:
    /// its role (PostgreSQL) and the tables it may use, read from the
    /// catalog — what its role owns (PostgreSQL), what its migrations
    /// created (SQLite; tables of an earlier layout were handed over by
    /// [`Database::migrate`]). On PostgreSQL its transactions will open
    /// with `statement_timeout_ms`.
    pub async fn plugin_identity(
        &self,
        plugin: &str,
        statement_timeout_ms: u64,
    ) -> Result<(Option<String>, Arc<[String]>), SetupError> {
        match self {
            Database::Postgres(pg) => {
                let identity = pg.provision(plugin).await.map_err(SetupError::Identity)?;
                pg.set_statement_timeout(plugin, statement_timeout_ms);
                let tables = pg.owned_tables(&identity.role).await?;
                Ok((Some(identity.role), tables.into()))
            }
            Database::Sqlite(pool, _) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT lower(table_name) FROM switchyard_plugin_tables WHERE plugin = $1 ORDER BY 1",
                )
                .bind(plugin)
                .fetch_all(pool)
                .await?;
                Ok((None, tables.into()))
            }
        }
    }

    /// Upgrade from the layout before plugin identities, where the host
    /// ran migrations and kept their tables: for the plugin's migrations
    /// recorded then (`runs_as_plugin` false), the tables their
    /// `CREATE TABLE` statements name become the plugin's — on PostgreSQL
    /// by ownership, only tables the host's user still owns; on SQLite in
    /// `switchyard_plugin_tables`, only tables no plugin has — and the
    /// migrations are marked done. This is the one place a migration's
    /// text decides anything, and only for migrations applied before the
    /// upgrade: a new plugin's migration cannot claim a table this way.
    pub(crate) async fn adopt_tables(
        &self,
        plugin: &str,
        migrations: &[MigrationSql],
    ) -> Result<(), SetupError> {
        let old: Vec<String> =
            match self {
                Database::Postgres(pg) => sqlx::query_scalar(
                    "SELECT id FROM switchyard_migrations WHERE plugin = $1 AND NOT runs_as_plugin",
                )
                .bind(plugin)
                .fetch_all(&pg.host)
                .await?,
                Database::Sqlite(pool, _) => sqlx::query_scalar(
                    "SELECT id FROM switchyard_migrations WHERE plugin = $1 AND NOT runs_as_plugin",
                )
                .bind(plugin)
                .fetch_all(pool)
                .await?,
            };
        if old.is_empty() {
            return Ok(());
        }
        let mut names: Vec<String> = Vec::new();
        for m in migrations.iter().filter(|m| old.contains(&m.id)) {
            let script = match self.backend() {
                Backend::Postgres => &m.postgres,
                Backend::Sqlite => &m.sqlite,
            };
            // The engine's own parser reads the text (PostgreSQL), or the
            // lexer (SQLite): names in comments and strings do not count.
            let created = crate::sql_gate::check_migration(script, self.backend())
                .map(|summary| summary.tables_created)
                .unwrap_or_default();
            for t in created {
                let t = t.to_lowercase();
                if !t.starts_with("switchyard_") && !names.contains(&t) {
                    names.push(t);
                }
            }
        }
        match self {
            Database::Postgres(pg) => {
                use sqlx::Executor;
                let role_name = plugin_role(plugin);
                let mut tx = pg.setup_tx().await?;
                // Evidence from the catalog as well as the text: the table
                // is the host's, the plugin's role of then was granted it,
                // and no other plugin role was (a table granted to two is
                // left to the operator).
                let mine: Vec<String> = sqlx::query_scalar(
                    "SELECT pg_catalog.format('%I.%I'::text, n.nspname::text, c.relname::text) FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.relkind IN ('r', 'p') AND n.nspname = $1::text
                        AND pg_catalog.lower(c.relname::text) = ANY($2::text[])
                        AND c.relowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)
                        AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a
                                     WHERE a.grantee = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $3::text))
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a
                                          JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
                                         WHERE r.rolname LIKE 'switchyard\\_plugin\\_%' AND r.rolname <> $3::text)",
                )
                .bind(pg.app_schema())
                .bind(&names)
                .bind(&role_name)
                .fetch_all(&mut *tx)
                .await?;
                // A new owner needs CREATE on the schema; granted and
                // taken back inside this transaction, so no session of
                // the plugin ever holds it.
                let role = crate::pg_identity::quote_ident(&role_name);
                let schema = crate::pg_identity::quote_ident(&pg.app_schema());
                if !mine.is_empty() {
                    tx.execute(format!("GRANT CREATE ON SCHEMA {schema} TO {role}").as_str())
                        .await?;
                    for table in &mine {
                        tx.execute(format!("ALTER TABLE {table} OWNER TO {role}").as_str())
                            .await?;
                    }
                    tx.execute(format!("REVOKE CREATE ON SCHEMA {schema} FROM {role}").as_str())
                        .await?;
                }
                sqlx::query("UPDATE switchyard_migrations SET runs_as_plugin = true WHERE plugin = $1 AND id = ANY($2)")
                    .bind(plugin)
                    .bind(&old)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                if mine.len() < names.len() {
                    tracing::warn!(plugin, role = %role_name, adopted = ?mine, named = ?names, "upgrade: some tables its earlier migrations created were not handed over (not the host's, not granted to it, or granted to another plugin too); give them to the plugin with ALTER TABLE ... OWNER TO {role_name} if they are its own");
                } else if !mine.is_empty() {
                    tracing::info!(plugin, role = %role_name, tables = ?mine, "tables of the earlier layout handed over to the plugin's role");
                }
            }
            Database::Sqlite(pool, _) => {
                let mut tx = pool.begin().await?;
                let existing = sqlite_tables(&mut tx).await?;
                for t in names.iter().filter(|t| existing.contains(t)) {
                    sqlx::query(
                        "INSERT INTO switchyard_plugin_tables (plugin, table_name) SELECT $1, $2 \
                         WHERE NOT EXISTS (SELECT 1 FROM switchyard_plugin_tables WHERE lower(table_name) = $2)",
                    )
                    .bind(plugin)
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
                }
                for id in &old {
                    sqlx::query("UPDATE switchyard_migrations SET runs_as_plugin = 1 WHERE plugin = $1 AND id = $2")
                        .bind(plugin)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn migration_checksum(
        &self,
        plugin: &str,
        id: &str,
    ) -> Result<Option<String>, SetupError> {
        let sql = "SELECT checksum FROM switchyard_migrations WHERE plugin = $1 AND id = $2";
        Ok(match self {
            Database::Postgres(pg) => {
                sqlx::query_scalar(sql)
                    .bind(plugin)
                    .bind(id)
                    .fetch_optional(&pg.host)
                    .await?
            }
            Database::Sqlite(pool, _) => {
                sqlx::query_scalar(sql)
                    .bind(plugin)
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
            }
        })
    }
}

/// Refuse a migration the gate does not allow (PostgreSQL: anything but the
/// plugin's own tables, indexes, sequences and enum types and seed rows),
/// naming the construct.
pub(crate) fn refuse_migration(
    plugin: &str,
    m: &MigrationSql,
    script: &str,
    backend: Backend,
) -> Result<(), SetupError> {
    crate::sql_gate::check_migration(script, backend)
        .map(|_| ())
        .map_err(|e| SetupError::Refused {
            plugin: plugin.to_string(),
            id: m.id.clone(),
            reason: e.to_string(),
        })
}

/// The lowercased names of a SQLite schema's tables and views.
pub(crate) async fn sqlite_tables(
    conn: &mut sqlx::SqliteConnection,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT lower(name) FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(conn)
    .await
}
