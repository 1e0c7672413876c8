//! Plugin identities on PostgreSQL: who a plugin's SQL runs as.
//!
//! The boundary between plugins, and between a plugin and the host, is the
//! database session's identity, not a filter on SQL text:
//!
//! - Each plugin has its own **login role**, `switchyard_plugin_<name>`
//!   (named after the operator's config key, never after what the plugin
//!   says it is). Its statements run in sessions *logged in* as that role,
//!   from a pool of its own. `SET ROLE` is checked against the session
//!   user, so there is nothing to reset to: `set_config('role', ...)`,
//!   however it is spelled, leaves the plugin the plugin.
//! - The plugin's **migrations run in such a session** too, so the tables
//!   they create are owned by the plugin's role; what a plugin may touch
//!   afterwards is what it owns, read from the catalog.
//! - The host's bookkeeping — processed-markers and outbox rows — must
//!   commit in the *plugin's* transaction (P1). It gets there through
//!   functions in the host-owned schema `switchyard_host`, `SECURITY
//!   DEFINER`, that refuse to run unless their first argument is the
//!   host's secret, which only ever travels as a bind parameter and lives
//!   in a table no plugin role can read; they also check that the session
//!   user is the role registered for the plugin named in the call. A
//!   plugin that calls them itself gets `permission denied`.
//! - Host tables (`switchyard_*`) are owned by the host's user with no
//!   grants to anyone: a plugin role cannot read or write them.
//!
//! The host's user needs `LOGIN CREATEROLE` and to own the database (or
//! at least its `public` schema); no superuser.

use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The host-owned schema of the guarded functions and the host's secrets.
pub const HOST_SCHEMA: &str = "switchyard_host";

/// `lock_timeout` of the host's own sessions (setup, relay, health): a lock held elsewhere
/// (another router's setup, an operator's session) becomes an error that
/// says so within seconds instead of a hang.
pub const SETUP_LOCK_TIMEOUT_MS: u64 = 10_000;

/// `lock_timeout` inside a plugin's transaction (its statements and the
/// host's markers): a row lock held by another transaction for longer
/// than this fails the statement instead of holding the lane.
pub const EVENT_LOCK_TIMEOUT_MS: u64 = 5_000;

/// A plugin's database identity: its role and the pool of sessions logged
/// in as it.
#[derive(Debug, Clone)]
pub struct PluginDb {
    /// The plugin's name (its config key).
    pub plugin: Arc<str>,
    /// Its login role.
    pub role: String,
    /// Sessions logged in as `role`.
    pub pool: PgPool,
    /// The plugin's `statement_timeout_ms` in service, with which its
    /// transactions open (so that entering its call needs no round trip
    /// to set it); kept up to date on every (re)load.
    pub statement_timeout_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Everything the host keeps for PostgreSQL: its own pool, how to open
/// sessions as plugins, the plugins' identities and the host's secret.
#[derive(Debug)]
pub struct PgDb {
    /// The host's own sessions (setup, relay, admin, dead letters).
    pub host: PgPool,
    /// The host's connect options: plugin sessions use the same server
    /// and database with the plugin's role and password.
    options: PgConnectOptions,
    /// Pool size of each plugin's sessions.
    max_connections: u32,
    /// The schema that holds the service's tables (`public` unless the
    /// host's `search_path` says otherwise).
    app_schema: RwLock<Option<String>>,
    /// Plugin name → identity, once provisioned.
    plugins: RwLock<HashMap<String, PluginDb>>,
    /// The secret the guarded host functions require; read at setup.
    secret: RwLock<Option<Arc<str>>>,
}

/// Quote an identifier for PostgreSQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote a string literal for PostgreSQL (standard_conforming_strings).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub use switchyard_core::identity::plugin_role;

/// A random secret of 256 bits, hex.
fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl PgDb {
    /// Wrap the host's pool; nothing is created until [`PgDb::setup`].
    pub fn new(host: PgPool, options: PgConnectOptions, max_connections: u32) -> Self {
        Self {
            host,
            options,
            max_connections: max_connections.max(1),
            app_schema: RwLock::new(None),
            plugins: RwLock::new(HashMap::new()),
            secret: RwLock::new(None),
        }
    }

    /// The secret for guarded host calls, once [`PgDb::setup`] ran.
    pub fn secret(&self) -> Option<Arc<str>> {
        self.secret
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Record the `statement_timeout_ms` of the plugin's version in
    /// service (see [`PluginDb::statement_timeout_ms`]).
    pub fn set_statement_timeout(&self, plugin: &str, timeout_ms: u64) {
        if let Some(identity) = self.plugin(plugin) {
            identity
                .statement_timeout_ms
                .store(timeout_ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The identity of `plugin`, once provisioned.
    pub fn plugin(&self, plugin: &str) -> Option<PluginDb> {
        self.plugins
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(plugin)
            .cloned()
    }

    /// The schema of the service's tables.
    pub fn app_schema(&self) -> String {
        self.app_schema
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "public".to_string())
    }

    /// A transaction on the host's pool holding switchyard's setup lock,
    /// with a `lock_timeout`: routers starting together run their setup
    /// one after the other, and a lock held elsewhere fails within seconds
    /// with a message instead of hanging. The lock is a table lock on
    /// `switchyard_host.setup_lock`, which no plugin role can take (an
    /// advisory lock can be taken by any session, a plugin's included);
    /// only the very first setup, before that table exists, uses an
    /// advisory lock.
    pub async fn setup_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        // The host's sessions carry `lock_timeout` from their start-up
        // options (see `Database::connect`).
        let mut tx = self.host.begin().await?;
        let lock_table: Option<String> = sqlx::query_scalar(&format!(
            "SELECT to_regclass('{HOST_SCHEMA}.setup_lock')::text"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let lock = match lock_table {
            Some(table) => format!("LOCK TABLE {table} IN EXCLUSIVE MODE"),
            // The key: the first eight bytes of "switchyard" as a number.
            None => "SELECT pg_advisory_xact_lock(8319683387291953522)".to_string(),
        };
        tx.execute(lock.as_str()).await?;
        Ok(tx)
    }

    /// Set a plugin role's password back to the one the host keeps.
    pub async fn reset_password(&self, plugin: &str) -> Result<(), sqlx::Error> {
        let row: Option<(String, String)> = sqlx::query_as(&format!(
            "SELECT role, password FROM {HOST_SCHEMA}.plugin_roles WHERE plugin = $1"
        ))
        .bind(plugin)
        .fetch_optional(&self.host)
        .await?;
        let Some((role, password)) = row else {
            return Ok(());
        };
        self.run_locked(&format!(
            "ALTER ROLE {} PASSWORD {}",
            quote_ident(&role),
            quote_literal(&password)
        ))
        .await
    }

    /// Take back settings stored on a plugin's role (`ALTER ROLE ... SET`).
    pub async fn reset_role_settings(&self, role: &str) -> Result<(), sqlx::Error> {
        let database: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&self.host)
            .await?;
        let role = quote_ident(role);
        self.run_locked(&format!(
            "ALTER ROLE {role} RESET ALL; ALTER ROLE {role} IN DATABASE {} RESET ALL",
            quote_ident(&database)
        ))
        .await
    }

    /// Run `sql` (no parameters) in a transaction of its own under the
    /// setup lock.
    pub async fn run_locked(&self, sql: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.setup_tx().await?;
        tx.execute(sql).await?;
        tx.commit().await
    }

    /// Create (or bring up to date) the host schema, its secret, the
    /// registry of plugin roles and the guarded functions. Run after the
    /// host's tables exist; idempotent.
    pub async fn setup(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.setup_tx().await?;
        let app: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut *tx)
            .await?;
        tx.execute(host_schema_sql(&app).as_str()).await?;
        // Each router process has a secret of its own, removed when it
        // closes: a secret that leaked somehow is not valid for ever.
        let secret = self.secret().map_or_else(random_secret, |s| s.to_string());
        sqlx::query(&format!(
            "INSERT INTO {HOST_SCHEMA}.secrets (secret) VALUES ($1) ON CONFLICT DO NOTHING"
        ))
        .bind(&secret)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        *self
            .secret
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(secret.into());
        *self
            .app_schema
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(app);
        Ok(())
    }

    /// Make sure `plugin` has its login role, a password the host knows,
    /// the right to call the guarded functions and nothing else it should
    /// not have; open (or reuse) its pool. Refuses a role that is
    /// registered to another plugin (two config keys that map to one
    /// role).
    pub async fn provision(&self, plugin: &str) -> Result<PluginDb, ProvisionError> {
        if let Some(known) = self.plugin(plugin) {
            return Ok(known);
        }
        // Roles are the cluster's, not the database's: routers of other
        // databases of the same cluster may alter the same role at the
        // same moment ("tuple concurrently updated"). Try again.
        let mut attempt = 0;
        loop {
            match self.provision_once(plugin).await {
                Err(ProvisionError::Database { source, .. })
                    if attempt < 5 && source.to_string().contains("concurrently") =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn provision_once(&self, plugin: &str) -> Result<PluginDb, ProvisionError> {
        let role = plugin_role(plugin);
        let failed = |source| ProvisionError::Database {
            role: role.clone(),
            source,
        };
        let mut tx = self.setup_tx().await.map_err(failed)?;
        let registered: Option<(String, String)> = sqlx::query_as(&format!(
            "SELECT plugin, password FROM {HOST_SCHEMA}.plugin_roles WHERE role = $1"
        ))
        .bind(&role)
        .fetch_optional(&mut *tx)
        .await
        .map_err(failed)?;
        let password = match registered {
            Some((owner, _)) if owner != plugin => {
                return Err(ProvisionError::RoleTaken {
                    plugin: plugin.to_string(),
                    role,
                    owner,
                });
            }
            Some((_, password)) => password,
            None => {
                let password = random_secret();
                sqlx::query(&format!(
                    "INSERT INTO {HOST_SCHEMA}.plugin_roles (plugin, role, password) VALUES ($1, $2, $3)"
                ))
                .bind(plugin)
                .bind(&role)
                .bind(&password)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
                password
            }
        };
        let info: Option<(bool, bool, bool)> = sqlx::query_as(
            "SELECT rolsuper, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = $1",
        )
        .bind(&role)
        .fetch_optional(&mut *tx)
        .await
        .map_err(failed)?;
        if let Some((superuser, replication, bypassrls)) = info
            && (superuser || replication || bypassrls)
        {
            return Err(ProvisionError::Superuser { role });
        }
        let quoted = quote_ident(&role);
        // Only what a CREATEROLE user may set; superuser, replication and
        // bypassrls are off by default and refused above.
        let attributes = "LOGIN NOCREATEDB NOCREATEROLE NOINHERIT";
        let create_or_alter = if info.is_none() {
            format!(
                "CREATE ROLE {quoted} {attributes} PASSWORD {}",
                quote_literal(&password)
            )
        } else {
            // An existing role (a NOLOGIN role of an earlier layout, or one
            // an operator made): log in with the password the host knows.
            format!(
                "ALTER ROLE {quoted} {attributes} PASSWORD {}",
                quote_literal(&password)
            )
        };
        tx.execute(create_or_alter.as_str()).await.map_err(failed)?;
        let app = quote_ident(&self.app_schema());
        let database: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(&mut *tx)
            .await
            .map_err(failed)?;
        let database = quote_ident(&database);
        // The host is a member of the plugin's role (to hand its tables
        // over, read them for `plugin test`, and cancel its statements);
        // the plugin role is a member of nothing. Its sessions' defaults:
        // the service schema only, and the host's timeouts.
        tx.execute(
            format!(
                "GRANT {quoted} TO CURRENT_USER;
                 GRANT USAGE ON SCHEMA {app} TO {quoted};
                 REVOKE CREATE ON SCHEMA {app} FROM {quoted};
                 GRANT USAGE ON SCHEMA {HOST_SCHEMA} TO {quoted};
                 CREATE SCHEMA IF NOT EXISTS {quoted} AUTHORIZATION {quoted};
                 ALTER ROLE {quoted} RESET ALL;
                 ALTER ROLE {quoted} IN DATABASE {database} RESET ALL;"
            )
            .as_str(),
        )
        .await
        .map_err(failed)?;
        for f in GUARDED {
            tx.execute(format!("GRANT EXECUTE ON FUNCTION {HOST_SCHEMA}.{f} TO {quoted}").as_str())
                .await
                .map_err(failed)?;
        }
        // A role that is a member of another could `SET ROLE` to it.
        let memberships: Vec<String> = sqlx::query_scalar(
            "SELECT r.rolname::text FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid
              WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = $1)",
        )
        .bind(&role)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        if !memberships.is_empty() {
            return Err(ProvisionError::Member {
                role,
                of: memberships.join(", "),
            });
        }
        // Grants of an earlier layout (tables named in a migration's text,
        // the host's own tables among them) are taken back: from now on a
        // plugin uses what it owns.
        let stray: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               CROSS JOIN LATERAL aclexplode(c.relacl) a
              WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
                AND c.relowner <> a.grantee
              GROUP BY 1",
        )
        .bind(&role)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        for rel in stray {
            tx.execute(format!("REVOKE ALL ON {rel} FROM {quoted}").as_str())
                .await
                .map_err(failed)?;
        }
        tx.commit().await.map_err(failed)?;

        let options = self
            .options
            .clone()
            .username(&role)
            .password(&password)
            .application_name(&format!("switchyard plugin {plugin}"))
            .options([
                // Its own schema first (where its migrations create), then
                // the service schema (where its tables are moved).
                (
                    "search_path",
                    format!("{role},{}", self.app_schema()).as_str(),
                ),
                ("lock_timeout", &EVENT_LOCK_TIMEOUT_MS.to_string()),
                ("idle_in_transaction_session_timeout", "600000"),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .min_connections(0)
            .idle_timeout(Duration::from_secs(120))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        // Fail now, with a message, if the role cannot log in (pg_hba.conf).
        pool.acquire()
            .await
            .map_err(|source| ProvisionError::Login {
                role: role.clone(),
                source,
            })?;
        let db = PluginDb {
            plugin: plugin.into(),
            role,
            pool,
            statement_timeout_ms: Arc::new(std::sync::atomic::AtomicU64::new(
                switchyard_core::limits::Limits::default().statement_timeout_ms,
            )),
        };
        self.plugins
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(plugin.to_string(), db.clone());
        Ok(db)
    }

    /// The tables `role` owns in the service schema: what the plugin may
    /// use, read from the catalog.
    pub async fn owned_tables(&self, role: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = $1)
                AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                AND n.nspname = $2
              ORDER BY 1",
        )
        .bind(role)
        .bind(self.app_schema())
        .fetch_all(&self.host)
        .await
    }

    /// Cancel the plugin's statements that have run longer than
    /// `timeout_ms` (the host's deadline, when the server's own
    /// `statement_timeout` did not stop them); returns how many.
    pub async fn cancel_overdue(&self, role: &str, timeout_ms: u64) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity
              WHERE usename = $1 AND state = 'active' AND pid <> pg_backend_pid()
                AND clock_timestamp() - query_start > make_interval(secs => $2::float8 / 1000)",
        )
        .bind(role)
        .bind(timeout_ms as f64)
        .fetch_one(&self.host)
        .await
    }

    /// Close every pool.
    pub async fn close(&self) {
        let pools: Vec<PgPool> = self
            .plugins
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|p| p.pool.clone())
            .collect();
        for pool in pools {
            pool.close().await;
        }
        if let Some(secret) = self.secret() {
            let removed = sqlx::query(&format!(
                "DELETE FROM {HOST_SCHEMA}.secrets WHERE secret = $1"
            ))
            .bind(&*secret)
            .execute(&self.host)
            .await;
            if let Err(e) = removed {
                tracing::warn!(error = %e, "cannot remove this router's host secret");
            }
        }
        self.host.close().await;
    }
}

/// Why a plugin's identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Two config keys map to one role.
    #[error(
        "plugin {plugin} would run as database role {role}, which belongs to plugin {owner}: config keys that differ only in case or punctuation map to the same role; rename one of them"
    )]
    RoleTaken {
        /// The plugin asking.
        plugin: String,
        /// The role.
        role: String,
        /// The plugin it is registered to.
        owner: String,
    },
    /// The role is a member of other roles, which it could `SET ROLE` to.
    #[error(
        "database role {role} is a member of {of}; a plugin's role must be a member of nothing (it could SET ROLE to them): REVOKE those memberships"
    )]
    Member {
        /// The role.
        role: String,
        /// The roles it is a member of.
        of: String,
    },
    /// The role exists with SUPERUSER, REPLICATION or BYPASSRLS: it
    /// would be no boundary.
    #[error(
        "database role {role} has SUPERUSER, REPLICATION or BYPASSRLS; a plugin's role must have none of them: drop it or ALTER ROLE it (as a superuser)"
    )]
    Superuser {
        /// The role.
        role: String,
    },
    /// The plugin's role cannot log in.
    #[error(
        "plugin sessions cannot log in as {role}: {source}; pg_hba.conf must let switchyard_plugin_* roles connect to this database the way the host's user does (password or trust)"
    )]
    Login {
        /// The role.
        role: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Any other database error.
    #[error(
        "cannot set up database role {role}: {source} (the host's user needs LOGIN CREATEROLE and to own the database)"
    )]
    Database {
        /// The role.
        role: String,
        /// The driver's error.
        source: sqlx::Error,
    },
}

/// The signatures of the guarded functions, for grants.
const GUARDED: [&str; 5] = [
    "mark(text, text, text, text, text[], text[], integer[], bigint[], text, timestamptz)",
    "claim_replay(text, text, text, text, text, text, integer, timestamptz)",
    "enqueue(text, text, text, text[], bytea[], bytea[], text[], integer[])",
    "migration_begin(text, text, text, text)",
    "migration_done(text, text, text, text, text)",
];

/// The host schema, its tables and the guarded functions. `app` is the
/// schema of `switchyard_processed`, `switchyard_outbox` and the plugins'
/// tables.
fn host_schema_sql(app: &str) -> String {
    let app = quote_ident(app);
    // Every function: SECURITY DEFINER (it runs as the host), a fixed
    // search_path (a plugin cannot shadow what it calls), schema-qualified
    // tables, and the guard first. The guard takes the host's secret (any
    // of the running routers'), the transaction id the host read when it
    // opened the plugin's transaction (so a call made after the plugin
    // ended that transaction itself is refused: the host's writes never
    // commit apart from the event), and the plugin named in the call,
    // which must be the session user's.
    let definer = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp";
    let mut sql = format!(
        r#"
CREATE SCHEMA IF NOT EXISTS {HOST_SCHEMA};
REVOKE ALL ON SCHEMA {HOST_SCHEMA} FROM PUBLIC;
CREATE TABLE IF NOT EXISTS {HOST_SCHEMA}.secrets (
    secret text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {HOST_SCHEMA}.setup_lock (id integer PRIMARY KEY);
CREATE TABLE IF NOT EXISTS {HOST_SCHEMA}.plugin_roles (
    plugin text PRIMARY KEY,
    role text NOT NULL UNIQUE,
    password text NOT NULL
);
REVOKE ALL ON ALL TABLES IN SCHEMA {HOST_SCHEMA} FROM PUBLIC;
REVOKE ALL ON {app}.switchyard_processed, {app}.switchyard_outbox FROM PUBLIC;

CREATE OR REPLACE FUNCTION {HOST_SCHEMA}.guard(p_secret text, p_xid text, p_plugin text) RETURNS void
{definer} AS $f$
BEGIN
    IF p_secret IS NULL OR NOT EXISTS (
        SELECT 1 FROM {HOST_SCHEMA}.secrets WHERE secret = p_secret
    ) THEN
        RAISE EXCEPTION 'switchyard host function called without the host''s secret'
            USING ERRCODE = '42501';
    END IF;
    IF p_xid IS DISTINCT FROM pg_current_xact_id()::text THEN
        RAISE EXCEPTION 'switchyard host call outside the event''s transaction (the plugin ended it)'
            USING ERRCODE = '42501';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM {HOST_SCHEMA}.plugin_roles WHERE plugin = p_plugin AND role = session_user
    ) THEN
        RAISE EXCEPTION 'session user % is not the database role of plugin %', session_user, p_plugin
            USING ERRCODE = '42501';
    END IF;
END
$f$;
REVOKE ALL ON FUNCTION {HOST_SCHEMA}.guard(text, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION {HOST_SCHEMA}.mark(
    p_secret text, p_xid text, p_group text, p_plugin text, p_keys text[], p_topics text[],
    p_partitions integer[], p_offsets bigint[], p_outcome text, p_at timestamptz
) RETURNS SETOF text
{definer} AS $f$
BEGIN
    PERFORM {HOST_SCHEMA}.guard(p_secret, p_xid, p_plugin);
    RETURN QUERY
    INSERT INTO {app}.switchyard_processed AS p
        (consumer_group, plugin, dedupe_key, topic, kafka_partition, kafka_offset, outcome, processed_at)
    SELECT p_group, p_plugin, u.k, u.t, u.pa, u.o, p_outcome, p_at
      FROM unnest(p_keys, p_topics, p_partitions, p_offsets) AS u(k, t, pa, o)
    ON CONFLICT DO NOTHING
    RETURNING p.dedupe_key;
END
$f$;

CREATE OR REPLACE FUNCTION {HOST_SCHEMA}.claim_replay(
    p_secret text, p_xid text, p_group text, p_plugin text, p_key text, p_topic text,
    p_partition integer, p_at timestamptz
) RETURNS boolean
{definer} AS $f$
BEGIN
    PERFORM {HOST_SCHEMA}.guard(p_secret, p_xid, p_plugin);
    UPDATE {app}.switchyard_processed
       SET outcome = 'replayed', processed_at = p_at
     WHERE consumer_group = p_group AND plugin = p_plugin AND dedupe_key = p_key
       AND outcome = 'dead-lettered' AND topic = p_topic AND kafka_partition = p_partition;
    RETURN FOUND;
END
$f$;

CREATE OR REPLACE FUNCTION {HOST_SCHEMA}.enqueue(
    p_secret text, p_xid text, p_plugin text, p_topics text[], p_keys bytea[], p_payloads bytea[],
    p_headers text[], p_partitions integer[]
) RETURNS void
{definer} AS $f$
BEGIN
    PERFORM {HOST_SCHEMA}.guard(p_secret, p_xid, p_plugin);
    INSERT INTO {app}.switchyard_outbox (topic, msg_key, payload, headers, msg_partition, plugin)
    SELECT u.t, u.k, u.v, u.h, u.pa, p_plugin
      FROM unnest(p_topics, p_keys, p_payloads, p_headers, p_partitions)
           WITH ORDINALITY AS u(t, k, v, h, pa, n)
     ORDER BY u.n;
END
$f$;

-- Before a plugin's migration: take the plugin's registry row lock (two
-- routers starting together migrate one after the other; no plugin role
-- can take it), and if the migration has not run, bring the plugin's
-- tables into its own schema for the migration's transaction, where it
-- may create (an index, a constraint) without any right on the service
-- schema; migration_done moves them back.
CREATE OR REPLACE FUNCTION {HOST_SCHEMA}.migration_begin(p_secret text, p_xid text, p_plugin text, p_id text)
RETURNS text
{definer} AS $f$
DECLARE
    v_checksum text;
    v_rel record;
BEGIN
    PERFORM {HOST_SCHEMA}.guard(p_secret, p_xid, p_plugin);
    PERFORM 1 FROM {HOST_SCHEMA}.plugin_roles WHERE plugin = p_plugin FOR UPDATE;
    v_checksum := (SELECT checksum FROM {app}.switchyard_migrations WHERE plugin = p_plugin AND id = p_id);
    IF v_checksum IS NULL THEN
        FOR v_rel IN SELECT c.relname FROM pg_class c
                      WHERE c.relnamespace = '{app}'::regnamespace AND c.relkind IN ('r', 'p')
                        AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = session_user)
        LOOP
            EXECUTE format('ALTER TABLE %I.%I SET SCHEMA %I', '{app_plain}', v_rel.relname, session_user);
        END LOOP;
    END IF;
    RETURN v_checksum;
END
$f$;

-- After the plugin's migration ran in its own schema (the only one it may
-- create in): refuse anything but tables, their indexes, sequences and
-- types; move its tables (with their indexes and sequences) to the service
-- schema, where the seeds' table names stay queryable; record the
-- migration. All in the migration's transaction.
CREATE OR REPLACE FUNCTION {HOST_SCHEMA}.migration_done(p_secret text, p_xid text, p_plugin text, p_id text, p_checksum text)
RETURNS void
{definer} AS $f$
DECLARE
    v_role text := session_user;
    v_ns oid := (SELECT oid FROM pg_namespace WHERE nspname = v_role);
    v_bad text;
    v_rel record;
BEGIN
    PERFORM {HOST_SCHEMA}.guard(p_secret, p_xid, p_plugin);
    SELECT string_agg(kind || ' ' || name, ', ') INTO v_bad FROM (
        SELECT 'function' AS kind, p.proname::text AS name FROM pg_proc p WHERE p.pronamespace = v_ns
        UNION ALL SELECT 'operator', o.oprname::text FROM pg_operator o WHERE o.oprnamespace = v_ns
        UNION ALL SELECT 'view or other relation', c.relname::text FROM pg_class c
                   WHERE c.relnamespace = v_ns AND c.relkind NOT IN ('r', 'p', 'i', 'I', 'S')
        UNION ALL SELECT 'trigger', t.tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                   WHERE c.relnamespace = v_ns AND NOT t.tgisinternal
        UNION ALL SELECT 'rule', r.rulename::text FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
                   WHERE c.relnamespace = v_ns
        UNION ALL SELECT 'conversion', v.conname::text FROM pg_conversion v WHERE v.connamespace = v_ns
        UNION ALL SELECT 'collation', l.collname::text FROM pg_collation l WHERE l.collnamespace = v_ns
        UNION ALL SELECT 'text search object', d.dictname::text FROM pg_ts_dict d WHERE d.dictnamespace = v_ns
        UNION ALL SELECT 'text search object', g.cfgname::text FROM pg_ts_config g WHERE g.cfgnamespace = v_ns
    ) bad;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'a plugin migration may create tables, indexes, sequences and enum types only; it created: %', v_bad
            USING ERRCODE = '42501';
    END IF;
    FOR v_rel IN SELECT c.relname FROM pg_class c
                  WHERE c.relnamespace = v_ns AND c.relkind IN ('r', 'p')
    LOOP
        EXECUTE format('ALTER TABLE %I.%I SET SCHEMA %I', v_role, v_rel.relname, '{app_plain}');
    END LOOP;
    INSERT INTO {app}.switchyard_migrations (plugin, id, checksum, applied_at, runs_as_plugin)
    VALUES (p_plugin, p_id, p_checksum, to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'), true);
END
$f$;
"#,
        app_plain = app
            .trim_matches('"')
            .replace("\"\"", "\"")
            .replace('\'', "''"),
    );
    for f in GUARDED {
        sql.push_str(&format!(
            "REVOKE ALL ON FUNCTION {HOST_SCHEMA}.{f} FROM PUBLIC;\n"
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_plain_lowercase_identifiers() {
        assert_eq!(
            plugin_role("role-mapping"),
            "switchyard_plugin_role_mapping"
        );
        assert_eq!(plugin_role("Role.Mapping"), plugin_role("role-mapping"));
        assert!(plugin_role(&"x".repeat(100)).len() <= 63);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn every_guarded_function_checks_the_secret_first() {
        let sql = host_schema_sql("public");
        for f in [
            "mark(",
            "claim_replay(",
            "enqueue(",
            "migration_begin(",
            "migration_done(",
        ] {
            let at = sql
                .find(&format!("FUNCTION {HOST_SCHEMA}.{f}"))
                .unwrap_or_else(|| panic!("{f} missing"));
            let body = &sql[at..];
            let guard = body.find("PERFORM switchyard_host.guard(p_secret");
            let end = body.find("END\n$f$");
            assert!(
                matches!((guard, end), (Some(g), Some(e)) if g < e),
                "{f} does not call the guard"
            );
            assert!(body.contains("SECURITY DEFINER SET search_path = pg_catalog, pg_temp"));
        }
    }
}
