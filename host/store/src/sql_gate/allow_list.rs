//! The allow-lists: every function and type plugin SQL may name, in one
//! place for both engines.
//!
//! The rule is the same on both: a name that is not listed here is
//! refused, whatever it does. A function earns its place by computing a
//! value from its arguments alone (arithmetic, text, date and time, JSON,
//! arrays, aggregates, window functions, random values and UUIDs). Left
//! out on purpose, among many others: anything that reads or writes files,
//! large objects, settings or other sessions (`pg_read_file`, `lo_import`,
//! `set_config`, `pg_terminate_backend`), anything that runs SQL text it is
//! given (`query_to_xml`, `cursor_to_xml`, `table_to_xml`,
//! `database_to_xml`, `ts_stat`, `ts_rewrite`, `xpath` over those),
//! anything that waits or locks outside the plugin's rows
//! (`pg_sleep*`, `pg_advisory_*`), `pg_notify`, `dblink*`, catalog and
//! statistics functions (`pg_*`, `has_*_privilege`, `current_setting`),
//! `setseed` (session state) and, on SQLite, `load_extension`,
//! `fts3_tokenizer` and the `sqlite_*` introspection functions.
//!
//! To add a function: check that it has no side effect, takes no SQL text,
//! names no catalog object, and cannot wait; add it to the right group
//! below (lowercase) and a case to the gate's tests.

/// PostgreSQL functions a plugin may call, unqualified or as
/// `pg_catalog.<name>`. The grammar itself turns some SQL syntax into calls
/// of these (`EXTRACT` → `extract`, `AT TIME ZONE` → `timezone`,
/// `SUBSTRING(.. FROM ..)` → `substring`, `TRIM` → `btrim`, `SIMILAR TO` →
/// `similar_to_escape`, `OVERLAPS` → `overlaps`); `COALESCE`, `NULLIF`,
/// `GREATEST`, `LEAST`, `CASE` and `CURRENT_DATE`-style keywords are not
/// function calls in the parse tree and are checked as what they are.
#[rustfmt::skip]
pub const POSTGRES_FUNCTIONS: &[&str] = &[
    // Arithmetic and numbers.
    "abs", "cbrt", "ceil", "ceiling", "degrees", "div", "exp", "factorial", "floor", "gcd",
    "lcm", "ln", "log", "log10", "mod", "pi", "power", "pow", "radians", "round", "scale",
    "sign", "sqrt", "trunc", "width_bucket", "min_scale", "trim_scale", "random",
    "random_normal", "acos", "acosd", "asin", "asind", "atan", "atand", "atan2", "atan2d",
    "cos", "cosd", "cot", "cotd", "sin", "sind", "tan", "tand", "sinh", "cosh", "tanh",
    "asinh", "acosh", "atanh", "num_nulls", "num_nonnulls", "to_char", "to_number", "to_hex",
    "to_bin", "to_oct",
    // Text and bytes.
    "ascii", "bit_length", "btrim", "casefold", "char_length", "character_length", "chr",
    "concat", "concat_ws", "convert_from", "convert_to", "decode", "encode", "format",
    "get_bit", "get_byte", "initcap", "is_normalized", "left", "length", "lower", "lpad",
    "ltrim", "md5", "normalize", "octet_length", "overlay", "position", "quote_ident",
    "quote_literal", "quote_nullable", "regexp_count", "regexp_instr", "regexp_like",
    "regexp_match", "regexp_matches", "regexp_replace", "regexp_split_to_array",
    "regexp_split_to_table", "regexp_substr", "repeat", "replace", "reverse", "right",
    "rpad", "rtrim", "set_bit", "set_byte", "sha224", "sha256", "sha384", "sha512",
    "similar_to_escape", "split_part", "starts_with", "string_to_array", "string_to_table",
    "strpos", "substr", "substring", "to_ascii", "translate", "unistr", "upper",
    // Date and time.
    "age", "clock_timestamp", "date_add", "date_bin", "date_part", "date_subtract",
    "date_trunc", "extract", "isfinite", "justify_days", "justify_hours", "justify_interval",
    "make_date", "make_interval", "make_time", "make_timestamp", "make_timestamptz", "now",
    "overlaps", "statement_timestamp", "timeofday", "timezone", "to_date", "to_timestamp",
    "transaction_timestamp",
    // UUIDs.
    "gen_random_uuid", "uuidv4", "uuidv7", "uuid_extract_timestamp", "uuid_extract_version",
    // JSON and JSONB.
    "array_to_json", "json_agg", "json_agg_strict", "json_array_elements",
    "json_array_elements_text", "json_array_length", "json_build_array", "json_build_object",
    "json_each", "json_each_text", "json_extract_path", "json_extract_path_text", "json_object",
    "json_object_agg", "json_object_agg_strict", "json_object_agg_unique",
    "json_object_agg_unique_strict", "json_object_keys", "json_populate_record",
    "json_populate_recordset", "json_strip_nulls", "json_to_record", "json_to_recordset",
    "json_typeof", "jsonb_agg", "jsonb_agg_strict", "jsonb_array_elements",
    "jsonb_array_elements_text", "jsonb_array_length", "jsonb_build_array",
    "jsonb_build_object", "jsonb_each", "jsonb_each_text", "jsonb_extract_path",
    "jsonb_extract_path_text", "jsonb_insert", "jsonb_object", "jsonb_object_agg",
    "jsonb_object_agg_strict", "jsonb_object_agg_unique", "jsonb_object_agg_unique_strict",
    "jsonb_object_keys", "jsonb_path_exists", "jsonb_path_exists_tz", "jsonb_path_match",
    "jsonb_path_match_tz", "jsonb_path_query", "jsonb_path_query_array",
    "jsonb_path_query_array_tz", "jsonb_path_query_first", "jsonb_path_query_first_tz",
    "jsonb_path_query_tz", "jsonb_populate_record", "jsonb_populate_record_valid",
    "jsonb_populate_recordset", "jsonb_pretty", "jsonb_set", "jsonb_set_lax",
    "jsonb_strip_nulls", "jsonb_to_record", "jsonb_to_recordset", "jsonb_typeof",
    "row_to_json", "to_json", "to_jsonb",
    // Arrays and set-returning helpers.
    "array_agg", "array_append", "array_cat", "array_dims", "array_fill", "array_length",
    "array_lower", "array_ndims", "array_position", "array_positions", "array_prepend",
    "array_remove", "array_replace", "array_reverse", "array_sample", "array_shuffle",
    "array_sort", "array_to_string", "array_upper", "cardinality", "generate_series",
    "generate_subscripts", "trim_array", "unnest",
    // Ranges.
    "daterange", "int4range", "int8range", "numrange", "tsrange", "tstzrange", "isempty",
    "lower_inc", "lower_inf", "upper_inc", "upper_inf", "range_merge",
    // Full-text search on values (not ts_stat or ts_rewrite, which run SQL).
    "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
    "websearch_to_tsquery", "ts_rank", "ts_rank_cd", "ts_headline", "setweight", "strip",
    "numnode", "querytree", "tsvector_to_array", "array_to_tsvector",
    // Aggregates.
    "any_value", "avg", "bit_and", "bit_or", "bit_xor", "bool_and", "bool_or", "count",
    "every", "max", "min", "string_agg", "sum", "corr", "covar_pop", "covar_samp",
    "regr_avgx", "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope",
    "regr_sxx", "regr_sxy", "regr_syy", "stddev", "stddev_pop", "stddev_samp", "variance",
    "var_pop", "var_samp", "mode", "percentile_cont", "percentile_disc",
    // Window functions (rank and friends are also hypothetical-set aggregates).
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    // Sequences: only with a literal, unqualified sequence name (checked by
    // the gate), and the database checks the plugin's grant on it.
    "nextval", "currval", "setval",
];

/// The sequence functions: their first argument is a sequence's name,
/// which the gate requires to be a literal, unqualified and not the
/// host's.
pub const POSTGRES_SEQUENCE_FUNCTIONS: &[&str] = &["nextval", "currval", "setval"];

/// Built-in PostgreSQL types plugin SQL may cast to or declare columns of,
/// unqualified or as `pg_catalog.<name>` (the grammar writes `int`,
/// `integer`, `timestamp with time zone` … as `pg_catalog.int4`,
/// `pg_catalog.timestamptz` …).
#[rustfmt::skip]
pub const POSTGRES_TYPES: &[&str] = &[
    "bool", "boolean", "int2", "int4", "int8", "smallint", "integer", "int", "bigint",
    "numeric", "decimal", "float4", "float8", "real", "text", "varchar", "bpchar", "char",
    "bytea", "uuid", "json", "jsonb", "jsonpath", "date", "time", "timetz", "timestamp",
    "timestamptz", "interval", "inet", "cidr", "macaddr", "macaddr8", "money", "bit",
    "varbit", "tsvector", "tsquery", "int4range", "int8range", "numrange", "tsrange",
    "tstzrange", "daterange", "serial", "bigserial", "smallserial", "serial2", "serial4",
    "serial8",
];

/// Built-in PostgreSQL types that are not plain values: casting text to
/// them looks a catalog object up by name (`reg*`, caught by prefix) or
/// exposes internals. An unqualified type name that is neither here nor in
/// [`POSTGRES_TYPES`] (nor starts with `reg` or `pg_`) is taken to be the
/// plugin's own type (`CREATE TYPE … AS ENUM` in its migrations); the
/// database resolves it in the plugin's namespace.
#[rustfmt::skip]
pub const POSTGRES_CATALOG_TYPES: &[&str] = &[
    "oid", "xid", "xid8", "cid", "tid", "name", "aclitem", "refcursor", "txid_snapshot",
    "record", "cstring", "internal", "unknown", "void", "trigger", "event_trigger",
    "language_handler", "fdw_handler", "index_am_handler", "table_am_handler",
    "tsm_handler", "xml", "anyelement", "anyarray", "anynonarray", "anyenum", "anyrange",
    "anymultirange", "anycompatible", "anycompatiblearray", "anycompatiblenonarray",
    "anycompatiblerange", "anycompatiblemultirange", "int2vector", "oidvector",
];

/// SQLite functions a plugin may call (SQLite reports each call to the
/// authorizer by name, see `sqlite_sandbox`): core scalar functions, math,
/// date and time, JSON, aggregates and window functions. `->` and `->>`
/// are the JSON operators, `current_*` the keywords, which SQLite
/// implements as functions. Left out: `load_extension`, `fts3_tokenizer`,
/// `sqlite_*` (compile options, source id, file offsets) and anything an
/// extension might add.
#[rustfmt::skip]
pub const SQLITE_FUNCTIONS: &[&str] = &[
    // Core scalar functions.
    "abs", "changes", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex",
    "if", "ifnull", "iif", "instr", "last_insert_rowid", "length", "like", "likelihood",
    "likely", "lower", "ltrim", "max", "min", "nullif", "octet_length", "printf", "quote",
    "random", "randomblob", "replace", "round", "rtrim", "sign", "soundex", "substr",
    "substring", "total_changes", "trim", "typeof", "unhex", "unicode", "unistr",
    "unistr_quote", "unlikely", "upper", "zeroblob",
    // Math.
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos",
    "cosh", "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow",
    "power", "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
    // Date and time, and the CURRENT_* keywords.
    "date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff",
    "current_date", "current_time", "current_timestamp",
    // JSON (json1 is built in), including the -> and ->> operators.
    "json", "jsonb", "json_array", "jsonb_array", "json_array_length", "json_error_position",
    "json_extract", "jsonb_extract", "json_insert", "jsonb_insert", "json_object",
    "jsonb_object", "json_patch", "jsonb_patch", "json_pretty", "json_remove",
    "jsonb_remove", "json_replace", "jsonb_replace", "json_set", "jsonb_set", "json_type",
    "json_valid", "json_quote", "json_group_array", "jsonb_group_array",
    "json_group_object", "jsonb_group_object", "json_each", "json_tree", "->", "->>",
    // Aggregates.
    "avg", "count", "group_concat", "string_agg", "sum", "total",
    // Window functions.
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
];

/// SQLite's internal functions that its own `ALTER TABLE` calls while it
/// rewrites the schema (allowed in a migration scope only). SQLite does
/// not let SQL text call internal functions, so only its own nested
/// statements can reach them.
pub const SQLITE_ALTER_TABLE_FUNCTIONS: &[&str] = &[
    "sqlite_rename_column",
    "sqlite_rename_table",
    "sqlite_rename_test",
    "sqlite_rename_quotefix",
    "sqlite_drop_column",
];

/// Whether plugin SQL may call PostgreSQL function `name` (lowercase, as
/// the parser folds it; a quoted name keeps its case and must match).
pub fn postgres_function(name: &str) -> bool {
    POSTGRES_FUNCTIONS.contains(&name)
}

/// Whether plugin SQL may call SQLite function `name` (SQLite's function
/// names are case-insensitive).
pub fn sqlite_function(name: &str) -> bool {
    SQLITE_FUNCTIONS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_lowercase_and_without_duplicates() {
        for list in [
            POSTGRES_FUNCTIONS,
            POSTGRES_TYPES,
            POSTGRES_CATALOG_TYPES,
            SQLITE_FUNCTIONS,
        ] {
            let mut seen = std::collections::HashSet::new();
            for name in list {
                assert_eq!(name.to_ascii_lowercase(), *name);
                assert!(seen.insert(name), "{name} twice");
            }
        }
        for f in POSTGRES_SEQUENCE_FUNCTIONS {
            assert!(postgres_function(f));
        }
    }

    #[test]
    fn dangerous_functions_are_not_listed() {
        for f in [
            "set_config",
            "query_to_xml",
            "query_to_xml_and_xmlschema",
            "cursor_to_xml",
            "table_to_xml",
            "database_to_xml",
            "ts_stat",
            "ts_rewrite",
            "xpath",
            "lo_import",
            "pg_advisory_lock",
            "pg_sleep",
            "pg_notify",
            "dblink",
            "pg_read_file",
            "current_setting",
            "setseed",
        ] {
            assert!(!postgres_function(f), "{f}");
        }
        for f in [
            "load_extension",
            "fts3_tokenizer",
            "sqlite_offset",
            "sqlite_version",
            "readfile",
            "edit",
        ] {
            assert!(!sqlite_function(f), "{f}");
        }
    }
}
