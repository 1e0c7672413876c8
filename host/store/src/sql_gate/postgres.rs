//! The gate on PostgreSQL: plugin SQL is parsed by PostgreSQL's own
//! grammar (libpg_query, through the `pg_query` crate) and the whole parse
//! tree is walked against allow-lists.
//!
//! Parsing with the server's grammar is what makes the gate read SQL the
//! way the server will: comments between a name and its parenthesis,
//! `U&"…"` escapes, quoted names, array subscripts, nested subqueries and
//! CTEs all come out of the parser as the same tree nodes the server
//! executes. The tree is walked generically (it is serialized to JSON, so
//! every field of every node is visited, including ones this module does
//! not know about) and every node kind must be on [`DML_NODES`] (or, in a
//! migration, [`MIGRATION_NODES`]): a construct PostgreSQL adds later is
//! refused until someone lists it.
//!
//! Checked wherever they appear: every function call (against
//! [`allow_list::POSTGRES_FUNCTIONS`]), every relation (unqualified, not
//! `switchyard_*`, not `pg_*`, not temporary), every type name (casts,
//! column types), every parameter (`$1` … `$65535`) and `SELECT … INTO`.

use super::allow_list;
use super::{GateError, MigrationSummary, StatementKind};
use pg_query::protobuf::{
    AlterTableType, ConstrType, DropBehavior, ObjectType, SqlValueFunctionOp, TransactionStmtKind,
    VariableSetKind,
};
use serde_json::{Map, Value as Json};

/// Node kinds that may appear anywhere in a plugin's DML statement: the
/// four statements themselves (also as data-modifying CTEs), expressions,
/// joins, subqueries, CTEs, `ON CONFLICT`, `RETURNING`, row locks and the
/// SQL/JSON constructors. Missing on purpose: XML (`XmlExpr`,
/// `XmlSerialize`, `RangeTableFunc`), `TABLESAMPLE`, `WHERE CURRENT OF`,
/// `MERGE` and every utility statement.
const DML_NODES: &[&str] = &[
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "ResTarget",
    "MultiAssignRef",
    "ColumnRef",
    "ParamRef",
    "AConst",
    "String",
    "Integer",
    "Float",
    "Boolean",
    "BitString",
    "List",
    "AExpr",
    "BoolExpr",
    "NullTest",
    "BooleanTest",
    "FuncCall",
    "NamedArgExpr",
    "TypeCast",
    "TypeName",
    "CollateClause",
    "SubLink",
    "CaseExpr",
    "CaseWhen",
    "CoalesceExpr",
    "MinMaxExpr",
    "RowExpr",
    "AArrayExpr",
    "AIndirection",
    "AIndices",
    "AStar",
    "SortBy",
    "WindowDef",
    "GroupingSet",
    "GroupingFunc",
    "RangeVar",
    "RangeSubselect",
    "RangeFunction",
    "JoinExpr",
    "Alias",
    "WithClause",
    "CommonTableExpr",
    "CtesearchClause",
    "CtecycleClause",
    "OnConflictClause",
    "InferClause",
    "IndexElem",
    "ReturningClause",
    "ReturningOption",
    "LockingClause",
    "SetToDefault",
    "SqlvalueFunction",
    "ColumnDef",
    "JsonFormat",
    "JsonReturning",
    "JsonValueExpr",
    "JsonOutput",
    "JsonArgument",
    "JsonFuncExpr",
    "JsonBehavior",
    "JsonIsPredicate",
    "JsonParseExpr",
    "JsonScalarExpr",
    "JsonSerializeExpr",
    "JsonObjectConstructor",
    "JsonArrayConstructor",
    "JsonArrayQueryConstructor",
    "JsonAggConstructor",
    "JsonObjectAgg",
    "JsonArrayAgg",
    "JsonKeyValue",
    "JsonTable",
    "JsonTableColumn",
    "JsonTablePathSpec",
];

/// Node kinds a migration may use besides [`DML_NODES`]: the statements
/// of [`MIGRATION_STATEMENTS`] and their parts.
const MIGRATION_NODES: &[&str] = &[
    "CreateStmt",
    "Constraint",
    "IndexStmt",
    "CreateSeqStmt",
    "AlterSeqStmt",
    "AlterTableStmt",
    "AlterTableCmd",
    "RenameStmt",
    "DropStmt",
    "CommentStmt",
    "CreateEnumStmt",
    "AlterEnumStmt",
    "DefElem",
];

/// Top-level statements a migration may contain: tables, indexes,
/// sequences and enum types of its own, comments on them, and seed rows.
const MIGRATION_STATEMENTS: &[&str] = &[
    "CreateStmt",
    "IndexStmt",
    "CreateSeqStmt",
    "AlterSeqStmt",
    "AlterTableStmt",
    "RenameStmt",
    "DropStmt",
    "CommentStmt",
    "CreateEnumStmt",
    "AlterEnumStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
];

/// `ALTER TABLE` actions a migration may take.
const ALTER_TABLE_ACTIONS: &[AlterTableType] = &[
    AlterTableType::AtAddColumn,
    AlterTableType::AtColumnDefault,
    AlterTableType::AtDropNotNull,
    AlterTableType::AtSetNotNull,
    AlterTableType::AtDropColumn,
    AlterTableType::AtAlterColumnType,
    AlterTableType::AtAddConstraint,
    AlterTableType::AtDropConstraint,
    AlterTableType::AtValidateConstraint,
];

/// Sequence and identity options (`CREATE SEQUENCE … START 1`,
/// `GENERATED … AS IDENTITY (…)`); storage parameters and the rest are
/// refused.
const SEQUENCE_OPTIONS: &[&str] = &[
    "as",
    "increment",
    "start",
    "restart",
    "minvalue",
    "maxvalue",
    "cache",
    "cycle",
    "owned_by",
];

/// Index access methods a migration may use.
const INDEX_METHODS: &[&str] = &["btree", "hash", "gin", "gist", "brin"];

/// Whether the text runs only under [`Mode::Dml`] or is a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One statement a plugin sends through `db`.
    Dml,
    /// A migration script the host applies for the plugin.
    Migration,
}

/// The stack the parser and the walk run on. Both recurse as deep as the
/// statement nests (PostgreSQL's parser guards itself against the stack it
/// measures; the protobuf decoder stops at 100 levels), and the gate is
/// called from a plugin's host call, which runs on a wasm fiber's small
/// stack: a hostile statement must be refused, never overflow it. A
/// thread's stack is reserved, not committed, so 16 MiB costs only what
/// is touched.
const PARSE_STACK_BYTES: usize = 16 << 20;

/// Run `f` on a thread of its own with [`PARSE_STACK_BYTES`] of stack.
fn on_parser_stack<T: Send>(
    f: impl FnOnce() -> Result<T, GateError> + Send,
) -> Result<T, GateError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("switchyard-sql-gate".into())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(|e| GateError::Syntax(format!("cannot start the SQL parser: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(GateError::Syntax("the SQL parser failed".into())))
    })
}

/// Check one DML statement (see [`super::check`]).
pub(super) fn check(sql: &str) -> Result<StatementKind, GateError> {
    on_parser_stack(|| check_here(sql))
}

fn check_here(sql: &str) -> Result<StatementKind, GateError> {
    let stmts = parse(sql)?;
    let stmt = match stmts.as_slice() {
        [] => return Err(GateError::Empty),
        [one] => one,
        _ => return Err(GateError::MultipleStatements),
    };
    let (kind, body) = node(stmt)?;
    let statement = match kind {
        "SelectStmt" => StatementKind::Select,
        "InsertStmt" => StatementKind::Insert,
        "UpdateStmt" => StatementKind::Update,
        "DeleteStmt" => StatementKind::Delete,
        other => return Err(GateError::NotDml(statement_name(other, body))),
    };
    let with = body.get("with_clause").is_some_and(|w| !w.is_null());
    walk_node(Mode::Dml, kind, body)?;
    Ok(if with { StatementKind::With } else { statement })
}

/// Check a migration script (see [`super::check_migration`]).
pub(super) fn check_migration(script: &str) -> Result<MigrationSummary, GateError> {
    on_parser_stack(|| check_migration_here(script))
}

fn check_migration_here(script: &str) -> Result<MigrationSummary, GateError> {
    let stmts = parse(script)?;
    let mut tables_created: Vec<String> = Vec::new();
    for stmt in &stmts {
        let (kind, body) = node(stmt)?;
        if !MIGRATION_STATEMENTS.contains(&kind) {
            return Err(GateError::NotInMigration(statement_name(kind, body)));
        }
        walk_node(Mode::Migration, kind, body)?;
        if kind == "CreateStmt" {
            let name = body
                .get("relation")
                .and_then(|r| r.get("relname"))
                .and_then(Json::as_str)
                .ok_or_else(|| tree_error("CREATE TABLE without a name"))?;
            if !tables_created.iter().any(|t| t == name) {
                tables_created.push(name.to_string());
            }
        }
    }
    Ok(MigrationSummary { tables_created })
}

/// Parse with PostgreSQL's grammar; returns each statement's node.
fn parse(sql: &str) -> Result<Vec<Json>, GateError> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| GateError::Syntax(e.to_string()))?;
    let tree = serde_json::to_value(&parsed.protobuf)
        .map_err(|e| GateError::Syntax(format!("unreadable parse tree: {e}")))?;
    let stmts = tree
        .get("stmts")
        .and_then(Json::as_array)
        .ok_or_else(|| tree_error("no statement list"))?;
    stmts
        .iter()
        .map(|s| {
            s.get("stmt")
                .cloned()
                .ok_or_else(|| tree_error("a statement without a node"))
        })
        .collect()
}

/// A parse tree that is not shaped as expected: refused, never guessed.
fn tree_error(what: &str) -> GateError {
    GateError::Syntax(format!("unexpected parse tree: {what}"))
}

/// The kind and body of a `Node` (`{"node": {"Kind": {...}}}`).
fn node(v: &Json) -> Result<(&str, &Json), GateError> {
    v.get("node")
        .and_then(Json::as_object)
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
        .map(|(k, b)| (k.as_str(), b))
        .ok_or_else(|| tree_error("a node without a kind"))
}

/// Visit any value of the tree.
fn walk(mode: Mode, v: &Json) -> Result<(), GateError> {
    match v {
        Json::Array(items) => items.iter().try_for_each(|i| walk(mode, i)),
        Json::Object(map) if map.len() == 1 && map.contains_key("node") => match &map["node"] {
            Json::Null => Ok(()),
            _ => {
                let (kind, body) = node(v)?;
                walk_node(mode, kind, body)
            }
        },
        Json::Object(map) => walk_message(mode, map),
        _ => Ok(()),
    }
}

/// Visit a message that is not a `Node` wrapper. Some fields hold typed
/// messages rather than nodes (`InsertStmt.relation` is a `RangeVar`,
/// `TypeCast.type_name` a `TypeName`), so relations, type names and
/// `INTO` clauses are recognised by their fields wherever they are.
fn walk_message(mode: Mode, map: &Map<String, Json>) -> Result<(), GateError> {
    if map.contains_key("relname") && map.contains_key("relpersistence") {
        check_relation(map)?;
    }
    if map.contains_key("names") && map.contains_key("typmods") && map.contains_key("pct_type") {
        check_type(map)?;
    }
    if map.contains_key("rel") && map.contains_key("skip_data") {
        return Err(GateError::SelectInto);
    }
    map.values().try_for_each(|v| walk(mode, v))
}

/// Visit a node: its kind must be allowed, some kinds have checks of
/// their own, then every field is visited.
fn walk_node(mode: Mode, kind: &str, body: &Json) -> Result<(), GateError> {
    let allowed =
        DML_NODES.contains(&kind) || (mode == Mode::Migration && MIGRATION_NODES.contains(&kind));
    if !allowed {
        return Err(refusal(mode, kind, body));
    }
    match kind {
        "FuncCall" => check_function(body)?,
        "AExpr" => check_operator(body)?,
        "ParamRef" => check_param(body)?,
        "SelectStmt" if body.get("into_clause").is_some_and(|i| !i.is_null()) => {
            return Err(GateError::SelectInto);
        }
        "SqlvalueFunction" => check_sql_value_function(body)?,
        "Constraint" => check_constraint(body)?,
        "DefElem" => check_option(body)?,
        "CreateStmt" => check_create_table(body)?,
        "IndexStmt" => check_index(body)?,
        "AlterTableStmt" if object_type(body, "objtype") != Some(ObjectType::ObjectTable) => {
            return Err(GateError::NotInMigration(
                "ALTER of anything but a table".into(),
            ));
        }
        "AlterTableCmd" => check_alter_table_cmd(body)?,
        "RenameStmt" => check_rename(body)?,
        "DropStmt" => check_drop(body)?,
        "CommentStmt" => check_comment(body)?,
        "CreateEnumStmt" | "AlterEnumStmt" => {
            let names = string_list(body.get("type_name"))?;
            check_object_name(&names)?;
        }
        _ => {}
    }
    match body {
        Json::Object(map) => walk_message(mode, map),
        other => walk(mode, other),
    }
}

/// The strings of a list of `String` nodes (a qualified name).
fn string_list(v: Option<&Json>) -> Result<Vec<String>, GateError> {
    let items = v
        .and_then(Json::as_array)
        .ok_or_else(|| tree_error("a name that is not a list"))?;
    items
        .iter()
        .map(|item| {
            let (kind, body) = node(item)?;
            match (kind, body.get("sval").and_then(Json::as_str)) {
                ("String", Some(s)) => Ok(s.to_string()),
                _ => Err(tree_error("a name part that is not a string")),
            }
        })
        .collect()
}

/// A string field of a message (empty when absent).
fn text<'a>(body: &'a Json, field: &str) -> &'a str {
    body.get(field).and_then(Json::as_str).unwrap_or("")
}

/// An enum field, as its protobuf enum.
fn object_type(body: &Json, field: &str) -> Option<ObjectType> {
    enum_field(body, field).and_then(|n| ObjectType::try_from(n).ok())
}

fn enum_field(body: &Json, field: &str) -> Option<i32> {
    body.get(field)
        .and_then(Json::as_i64)
        .and_then(|n| i32::try_from(n).ok())
}

/// Relations: unqualified (plugins live in a schema-less namespace: an
/// unqualified name resolves to their own tables), not the host's
/// `switchyard_*` tables, not `pg_*` (which resolve to the catalog, first
/// on every search path), not temporary.
fn check_relation(map: &Map<String, Json>) -> Result<(), GateError> {
    let get = |f: &str| map.get(f).and_then(Json::as_str).unwrap_or("");
    let (catalog, schema, name) = (get("catalogname"), get("schemaname"), get("relname"));
    if !schema.is_empty() || !catalog.is_empty() {
        let full = [catalog, schema, name]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(".");
        return Err(GateError::QualifiedName(full));
    }
    check_name(name)?;
    if get("relpersistence") == "t" {
        return Err(GateError::Forbidden(format!("temporary table {name}")));
    }
    Ok(())
}

/// A name a plugin's SQL may give an object it uses or creates.
fn check_name(name: &str) -> Result<(), GateError> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("switchyard_") {
        return Err(GateError::HostTable(name.to_string()));
    }
    if lower.starts_with("pg_") {
        return Err(GateError::SystemRelation(name.to_string()));
    }
    Ok(())
}

/// A plugin object's name as a list: exactly one part (unqualified).
fn check_object_name(names: &[String]) -> Result<(), GateError> {
    match names {
        [name] => check_name(name),
        _ => Err(GateError::QualifiedName(names.join("."))),
    }
}

/// Function calls: the name must be on the allow-list, unqualified or as
/// `pg_catalog.<name>`; a sequence function's sequence must be a literal
/// name the plugin could own.
fn check_function(body: &Json) -> Result<(), GateError> {
    let names = string_list(body.get("funcname"))?;
    let name = match names.as_slice() {
        [name] => name,
        [schema, name] if schema == "pg_catalog" => name,
        _ => return Err(GateError::ForbiddenFunction(names.join("."))),
    };
    if !allow_list::postgres_function(name) {
        return Err(GateError::ForbiddenFunction(names.join(".")));
    }
    if allow_list::POSTGRES_SEQUENCE_FUNCTIONS.contains(&name.as_str()) {
        let sequence = body
            .get("args")
            .and_then(Json::as_array)
            .and_then(|a| a.first())
            .and_then(|a| node(a).ok())
            .filter(|(kind, _)| *kind == "AConst")
            .and_then(|(_, c)| c.get("val")?.get("Sval")?.get("sval")?.as_str());
        match sequence {
            Some(seq) if !seq.contains('.') && !seq.contains('"') => check_name(seq)?,
            _ => {
                return Err(GateError::Forbidden(format!(
                    "{name} without a literal, unqualified sequence name"
                )));
            }
        }
    }
    Ok(())
}

/// Operators: unqualified or `OPERATOR(pg_catalog.…)`.
fn check_operator(body: &Json) -> Result<(), GateError> {
    let names = string_list(body.get("name"))?;
    match names.as_slice() {
        [_] => Ok(()),
        [schema, _] if schema == "pg_catalog" => Ok(()),
        _ => Err(GateError::QualifiedName(format!(
            "OPERATOR({})",
            names.join(".")
        ))),
    }
}

/// Parameters are `$1` … `$65535` (PostgreSQL's wire limit).
fn check_param(body: &Json) -> Result<(), GateError> {
    let n = body.get("number").and_then(Json::as_i64).unwrap_or(0);
    if (1..=65535).contains(&n) {
        Ok(())
    } else {
        Err(GateError::BadParameter(format!("${n}")))
    }
}

/// Type names, in casts and column definitions.
fn check_type(map: &Map<String, Json>) -> Result<(), GateError> {
    let names = string_list(map.get("names"))?;
    if map.get("pct_type").and_then(Json::as_bool) == Some(true) {
        return Err(GateError::Forbidden("%TYPE".into()));
    }
    if map.get("setof").and_then(Json::as_bool) == Some(true) {
        return Err(GateError::Forbidden("SETOF".into()));
    }
    let listed = |n: &str| allow_list::POSTGRES_TYPES.contains(&n);
    match names.as_slice() {
        [schema, name] if schema == "pg_catalog" && listed(name) => Ok(()),
        [name] if listed(name) => Ok(()),
        [name]
            if !name.starts_with("reg")
                && !name.starts_with("pg_")
                && !allow_list::POSTGRES_CATALOG_TYPES.contains(&name.as_str()) =>
        {
            // The plugin's own type (an enum from its migrations).
            check_name(name)
        }
        _ => Err(GateError::ForbiddenType(
            names.last().cloned().unwrap_or_default(),
        )),
    }
}

/// `CURRENT_DATE` and friends are fine; `CURRENT_USER`, `SESSION_USER`,
/// `CURRENT_ROLE`, `CURRENT_CATALOG` and `CURRENT_SCHEMA` describe the
/// host's session, not the plugin's data.
fn check_sql_value_function(body: &Json) -> Result<(), GateError> {
    let op = enum_field(body, "op").and_then(|n| SqlValueFunctionOp::try_from(n).ok());
    use SqlValueFunctionOp as Op;
    match op {
        Some(
            Op::SvfopCurrentDate
            | Op::SvfopCurrentTime
            | Op::SvfopCurrentTimeN
            | Op::SvfopCurrentTimestamp
            | Op::SvfopCurrentTimestampN
            | Op::SvfopLocaltime
            | Op::SvfopLocaltimeN
            | Op::SvfopLocaltimestamp
            | Op::SvfopLocaltimestampN,
        ) => Ok(()),
        Some(other) => Err(GateError::Forbidden(
            other.as_str_name().trim_start_matches("SVFOP_").to_string(),
        )),
        None => Err(tree_error("an unknown SQL value function")),
    }
}

/// Column and table constraints: no exclusion constraints (operator
/// classes) and no tablespaces.
fn check_constraint(body: &Json) -> Result<(), GateError> {
    use ConstrType as C;
    let kind = enum_field(body, "contype").and_then(|n| ConstrType::try_from(n).ok());
    match kind {
        Some(C::ConstrExclusion) => Err(GateError::Forbidden("EXCLUDE constraints".into())),
        Some(_) if !text(body, "indexspace").is_empty() => {
            Err(GateError::Forbidden("USING INDEX TABLESPACE".into()))
        }
        Some(_) => Ok(()),
        None => Err(tree_error("an unknown constraint")),
    }
}

/// `WITH (…)` and sequence options: sequence options only.
fn check_option(body: &Json) -> Result<(), GateError> {
    let name = text(body, "defname");
    if !SEQUENCE_OPTIONS.contains(&name) || !text(body, "defnamespace").is_empty() {
        return Err(GateError::Forbidden(format!("option {name}")));
    }
    if name == "owned_by" {
        // `OWNED BY t.c` or `OWNED BY NONE`, never schema.t.c.
        let arg = body.get("arg").ok_or_else(|| tree_error("OWNED BY"))?;
        let (_, list) = node(arg)?;
        let parts = string_list(list.get("items"))?;
        if parts.len() > 2 {
            return Err(GateError::QualifiedName(parts.join(".")));
        }
        if let Some(table) = parts.first() {
            check_name(table)?;
        }
    }
    Ok(())
}

/// `CREATE TABLE`: a plain table of the plugin's own.
fn check_create_table(body: &Json) -> Result<(), GateError> {
    let non_empty = |f: &str| {
        body.get(f)
            .and_then(Json::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let present = |f: &str| body.get(f).is_some_and(|v| !v.is_null());
    let refuse = |what: &str| Err(GateError::Forbidden(format!("CREATE TABLE … {what}")));
    if non_empty("inh_relations") {
        return refuse("INHERITS");
    }
    if present("partspec") || present("partbound") {
        return refuse("PARTITION");
    }
    if present("of_typename") {
        return refuse("OF type");
    }
    if !text(body, "tablespacename").is_empty() {
        return refuse("TABLESPACE");
    }
    if !text(body, "access_method").is_empty() {
        return refuse("USING access method");
    }
    Ok(())
}

/// `CREATE INDEX`: a name of the plugin's own, an ordinary access method,
/// no tablespace.
fn check_index(body: &Json) -> Result<(), GateError> {
    let name = text(body, "idxname");
    if !name.is_empty() {
        check_name(name)?;
    }
    let method = text(body, "access_method");
    if !INDEX_METHODS.contains(&method) {
        return Err(GateError::Forbidden(format!("index method {method}")));
    }
    if !text(body, "table_space").is_empty() {
        return Err(GateError::Forbidden("CREATE INDEX … TABLESPACE".into()));
    }
    Ok(())
}

/// `ALTER TABLE` actions: columns, defaults, NOT NULL and constraints;
/// never `CASCADE` (which drops other roles' dependent objects too).
fn check_alter_table_cmd(body: &Json) -> Result<(), GateError> {
    let action = enum_field(body, "subtype").and_then(|n| AlterTableType::try_from(n).ok());
    match action {
        Some(a) if ALTER_TABLE_ACTIONS.contains(&a) => {}
        Some(AlterTableType::AtChangeOwner) => {
            return Err(GateError::NotInMigration("ALTER TABLE … OWNER TO".into()));
        }
        Some(a) => {
            return Err(GateError::NotInMigration(format!(
                "ALTER TABLE action {}",
                a.as_str_name().trim_start_matches("AT_")
            )));
        }
        None => return Err(tree_error("an unknown ALTER TABLE action")),
    }
    no_cascade(body)
}

fn no_cascade(body: &Json) -> Result<(), GateError> {
    let behavior = enum_field(body, "behavior").and_then(|n| DropBehavior::try_from(n).ok());
    if behavior == Some(DropBehavior::DropCascade) {
        return Err(GateError::Forbidden(
            "CASCADE (it would drop other objects that depend on this one)".into(),
        ));
    }
    Ok(())
}

/// `ALTER … RENAME`: tables, columns, constraints, indexes and sequences,
/// to a name the plugin could create.
fn check_rename(body: &Json) -> Result<(), GateError> {
    use ObjectType as O;
    match object_type(body, "rename_type") {
        Some(O::ObjectTable | O::ObjectColumn | O::ObjectTabconstraint | O::ObjectIndex)
        | Some(O::ObjectSequence) => {}
        _ => return Err(GateError::NotInMigration("this RENAME".into())),
    }
    check_name(text(body, "newname"))?;
    no_cascade(body)
}

/// `DROP`: tables, indexes, sequences and types of the plugin's own,
/// unqualified, without `CASCADE`.
fn check_drop(body: &Json) -> Result<(), GateError> {
    use ObjectType as O;
    let kind = object_type(body, "remove_type");
    match kind {
        Some(O::ObjectTable | O::ObjectIndex | O::ObjectSequence | O::ObjectType) => {}
        Some(other) => {
            return Err(GateError::NotInMigration(format!(
                "DROP {}",
                other.as_str_name().trim_start_matches("OBJECT_")
            )));
        }
        None => return Err(tree_error("an unknown DROP")),
    }
    no_cascade(body)?;
    for object in body
        .get("objects")
        .and_then(Json::as_array)
        .ok_or_else(|| tree_error("DROP without objects"))?
    {
        let (k, b) = node(object)?;
        let names = match k {
            "List" => string_list(b.get("items"))?,
            "TypeName" => string_list(b.get("names"))?,
            _ => return Err(tree_error("a DROP object that is not a name")),
        };
        check_object_name(&names)?;
    }
    Ok(())
}

/// `COMMENT ON` a table, column, index, sequence, type or constraint of
/// the plugin's own.
fn check_comment(body: &Json) -> Result<(), GateError> {
    use ObjectType as O;
    let parts = match object_type(body, "objtype") {
        Some(O::ObjectTable | O::ObjectIndex | O::ObjectSequence | O::ObjectType) => 1,
        Some(O::ObjectColumn | O::ObjectTabconstraint) => 2,
        _ => return Err(GateError::NotInMigration("this COMMENT ON".into())),
    };
    let object = body
        .get("object")
        .ok_or_else(|| tree_error("COMMENT without an object"))?;
    let (k, b) = node(object)?;
    let names = match k {
        "List" => string_list(b.get("items"))?,
        "TypeName" => string_list(b.get("names"))?,
        "String" => vec![text(b, "sval").to_string()],
        _ => return Err(tree_error("a COMMENT object that is not a name")),
    };
    if names.len() != parts {
        return Err(GateError::QualifiedName(names.join(".")));
    }
    check_name(&names[0])
}

/// What to call a refused node in an error.
fn refusal(mode: Mode, kind: &str, body: &Json) -> GateError {
    let construct = match kind {
        "XmlExpr" | "XmlSerialize" => Some("XML functions"),
        "RangeTableFunc" | "RangeTableFuncCol" => Some("XMLTABLE"),
        "RangeTableSample" => Some("TABLESAMPLE"),
        "CurrentOfExpr" => Some("WHERE CURRENT OF"),
        "TableLikeClause" => Some("CREATE TABLE … (LIKE …)"),
        _ => None,
    };
    match construct {
        Some(c) => GateError::Forbidden(c.to_string()),
        None if kind.ends_with("Stmt") && mode == Mode::Migration => {
            GateError::NotInMigration(statement_name(kind, body))
        }
        None if kind.ends_with("Stmt") => GateError::NotDml(statement_name(kind, body)),
        None => GateError::Forbidden(kind.to_string()),
    }
}

/// A statement node's name as SQL spells it.
fn statement_name(kind: &str, body: &Json) -> String {
    let flag = |f: &str| body.get(f).and_then(Json::as_bool).unwrap_or(false);
    let kind_name = |prefix: &str| {
        let n = enum_field(body, "kind").unwrap_or(0);
        let name = match kind {
            "TransactionStmt" => TransactionStmtKind::try_from(n).map(|k| k.as_str_name()),
            _ => VariableSetKind::try_from(n).map(|k| k.as_str_name()),
        };
        name.unwrap_or("")
            .trim_start_matches(prefix)
            .replace('_', " ")
    };
    let name = match kind {
        "TransactionStmt" => return kind_name("TRANS_STMT_"),
        "VariableSetStmt" if kind_name("VAR_").starts_with("RESET") => "RESET",
        "VariableSetStmt" => "SET",
        "VariableShowStmt" => "SHOW",
        "CopyStmt" => "COPY",
        "DoStmt" => "DO",
        "CallStmt" => "CALL",
        "LockStmt" => "LOCK",
        "PrepareStmt" => "PREPARE",
        "ExecuteStmt" => "EXECUTE",
        "DeallocateStmt" => "DEALLOCATE",
        "DeclareCursorStmt" => "DECLARE CURSOR",
        "FetchStmt" => "FETCH/MOVE",
        "ClosePortalStmt" => "CLOSE",
        "ListenStmt" => "LISTEN",
        "UnlistenStmt" => "UNLISTEN",
        "NotifyStmt" => "NOTIFY",
        "DiscardStmt" => "DISCARD",
        "ExplainStmt" => "EXPLAIN",
        "MergeStmt" => "MERGE",
        "TruncateStmt" => "TRUNCATE",
        "VacuumStmt" => "VACUUM/ANALYZE",
        "LoadStmt" => "LOAD",
        "SelectStmt" => "SELECT",
        "CreateStmt" => "CREATE TABLE",
        "IndexStmt" => "CREATE INDEX",
        "DropStmt" => "DROP",
        "AlterTableStmt" => "ALTER TABLE",
        "CreateTableAsStmt" => "CREATE TABLE AS",
        "CreateFunctionStmt" if flag("is_procedure") => "CREATE PROCEDURE",
        "CreateFunctionStmt" => "CREATE FUNCTION",
        "CreateTrigStmt" => "CREATE TRIGGER",
        "CreateEventTrigStmt" => "CREATE EVENT TRIGGER",
        "RuleStmt" => "CREATE RULE",
        "CreatePolicyStmt" => "CREATE POLICY",
        "ViewStmt" => "CREATE VIEW",
        "CreateSchemaStmt" => "CREATE SCHEMA",
        "CreateExtensionStmt" => "CREATE EXTENSION",
        "CreateRoleStmt" => "CREATE ROLE",
        "AlterRoleStmt" | "AlterRoleSetStmt" => "ALTER ROLE",
        "GrantStmt" | "GrantRoleStmt" if flag("is_grant") => "GRANT",
        "GrantStmt" | "GrantRoleStmt" => "REVOKE",
        "AlterDefaultPrivilegesStmt" => "ALTER DEFAULT PRIVILEGES",
        "AlterOwnerStmt" => "ALTER … OWNER TO",
        "AlterObjectSchemaStmt" => "ALTER … SET SCHEMA",
        "AlterFunctionStmt" => "ALTER FUNCTION",
        "AlterSystemStmt" => "ALTER SYSTEM",
        "CreateDomainStmt" => "CREATE DOMAIN",
        "DefineStmt" => "CREATE AGGREGATE/OPERATOR/TYPE",
        "CompositeTypeStmt" => "CREATE TYPE … AS (…)",
        "RefreshMatViewStmt" => "REFRESH MATERIALIZED VIEW",
        "SecLabelStmt" => "SECURITY LABEL",
        "CreatedbStmt" => "CREATE DATABASE",
        other => other.trim_end_matches("Stmt"),
    };
    name.to_string()
}
