//! Values across the boundary: the WIT `value` variant bound as native
//! parameters, and result cells decoded back into it.

use super::*;

/// A `NULL` parameter whose type PostgreSQL infers from the statement (OID
/// 0, "unspecified"), so NULL fits any column.
pub(crate) struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;
pub(crate) type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

pub(crate) fn bind_pg<'q>(mut q: PgQuery<'q>, params: &[Value]) -> Result<PgQuery<'q>, StoreError> {
    for (i, p) in params.iter().enumerate() {
        q = match p {
            Value::Null => q.bind(UntypedNull),
            Value::Boolean(b) => q.bind(*b),
            Value::Int(n) => q.bind(*n),
            Value::Float(f) => q.bind(*f),
            Value::Text(s) => q.bind(s.clone()),
            Value::Bytes(b) => q.bind(b.clone()),
            Value::Json(s) => q.bind(parse_json(i, s)?),
            Value::Uuid(s) => q.bind(parse_uuid(i, s)?),
            Value::Timestamp(us) => q.bind(parse_timestamp(i, *us)?),
            Value::Date(s) => q.bind(parse_date(i, s)?),
        };
    }
    // A NULL leaves its parameter's type to PostgreSQL, which infers it
    // from the statement (an `integer` column: int4). sqlx would cache the
    // statement with that inferred type and later send an i64 into it as
    // int8 bytes ("incorrect binary data format"): a statement with a NULL
    // is prepared afresh instead of cached.
    if params.iter().any(|p| matches!(p, Value::Null)) {
        q = q.persistent(false);
    }
    Ok(q)
}

pub(crate) fn bind_sqlite<'q>(
    mut q: SqliteQuery<'q>,
    params: &[Value],
) -> Result<SqliteQuery<'q>, StoreError> {
    for (i, p) in params.iter().enumerate() {
        q = match p {
            Value::Null => q.bind(Option::<i64>::None),
            Value::Boolean(b) => q.bind(*b),
            Value::Int(n) => q.bind(*n),
            Value::Float(f) => q.bind(*f),
            Value::Text(s) => q.bind(s.clone()),
            Value::Bytes(b) => q.bind(b.clone()),
            // Validated, then stored as text so that both backends read
            // back the same representation.
            Value::Json(s) => q.bind(parse_json(i, s)?.to_string()),
            Value::Uuid(s) => q.bind(parse_uuid(i, s)?.hyphenated().to_string()),
            Value::Timestamp(us) => q.bind(parse_timestamp(i, *us)?),
            Value::Date(s) => q.bind(parse_date(i, s)?.format("%Y-%m-%d").to_string()),
        };
    }
    Ok(q)
}

pub(crate) fn parse_json(i: usize, s: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Invalid(format!("parameter ${} is not valid JSON: {e}", i + 1)))
}

pub(crate) fn parse_uuid(i: usize, s: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(s)
        .map_err(|e| StoreError::Invalid(format!("parameter ${} is not a UUID: {e}", i + 1)))
}

pub(crate) fn parse_timestamp(
    i: usize,
    micros: i64,
) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| {
        StoreError::Invalid(format!(
            "parameter ${} is out of the timestamp range: {micros} µs",
            i + 1
        ))
    })
}

pub(crate) fn parse_date(i: usize, s: &str) -> Result<chrono::NaiveDate, StoreError> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| {
        StoreError::Invalid(format!(
            "parameter ${} is not a date YYYY-MM-DD: {s:?} ({e})",
            i + 1
        ))
    })
}

/// Approximate bytes a value occupies, for the result-size cap.
pub fn value_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Boolean(_) => 1,
        Value::Int(_) | Value::Float(_) | Value::Timestamp(_) => 8,
        Value::Text(s) | Value::Json(s) | Value::Uuid(s) | Value::Date(s) => s.len(),
        Value::Bytes(b) => b.len(),
    }
}

pub(crate) fn decode_err(column: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("cannot read column {column}: {e}"))
}

pub(crate) fn pg_cell(row: &PgRow, i: usize) -> Result<Value, StoreError> {
    let column = &row.columns()[i];
    let name = column.name();
    let raw = row.try_get_raw(i).map_err(|e| decode_err(name, e))?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let type_name = column.type_info().name().to_string();
    let err = |e| decode_err(name, e);
    Ok(match type_name.as_str() {
        "BOOL" => Value::Boolean(row.try_get(i).map_err(err)?),
        "INT2" => Value::Int(i64::from(row.try_get::<i16, _>(i).map_err(err)?)),
        "INT4" => Value::Int(i64::from(row.try_get::<i32, _>(i).map_err(err)?)),
        "INT8" => Value::Int(row.try_get(i).map_err(err)?),
        "FLOAT4" => Value::Float(f64::from(row.try_get::<f32, _>(i).map_err(err)?)),
        "FLOAT8" => Value::Float(row.try_get(i).map_err(err)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" => {
            Value::Text(row.try_get(i).map_err(err)?)
        }
        "BYTEA" => Value::Bytes(row.try_get(i).map_err(err)?),
        "JSON" | "JSONB" => Value::Json(
            row.try_get::<serde_json::Value, _>(i)
                .map_err(err)?
                .to_string(),
        ),
        "UUID" => Value::Uuid(
            row.try_get::<uuid::Uuid, _>(i)
                .map_err(err)?
                .hyphenated()
                .to_string(),
        ),
        "TIMESTAMPTZ" => Value::Timestamp(
            row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)
                .map_err(err)?
                .timestamp_micros(),
        ),
        "TIMESTAMP" => Value::Timestamp(
            row.try_get::<chrono::NaiveDateTime, _>(i)
                .map_err(err)?
                .and_utc()
                .timestamp_micros(),
        ),
        "DATE" => Value::Date(
            row.try_get::<chrono::NaiveDate, _>(i)
                .map_err(err)?
                .format("%Y-%m-%d")
                .to_string(),
        ),
        "VOID" => Value::Null,
        other => {
            return Err(StoreError::Invalid(format!(
                "column {name} has type {other}, which plugins cannot read yet: cast it in the query, e.g. {name}::text or {name}::float8"
            )));
        }
    })
}

pub(crate) fn sqlite_cell(row: &SqliteRow, i: usize) -> Result<Value, StoreError> {
    let column = &row.columns()[i];
    let name = column.name();
    let raw = row.try_get_raw(i).map_err(|e| decode_err(name, e))?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    // The storage class of this value, not the column's declared type.
    let storage = raw.type_info().name().to_string();
    let declared = column.type_info().name().to_ascii_uppercase();
    let err = |e| decode_err(name, e);
    Ok(match storage.as_str() {
        "INTEGER" | "BOOLEAN" if declared == "BOOLEAN" => {
            Value::Boolean(row.try_get::<i64, _>(i).map_err(err)? != 0)
        }
        "INTEGER" | "BOOLEAN" => Value::Int(row.try_get(i).map_err(err)?),
        "REAL" => Value::Float(row.try_get(i).map_err(err)?),
        "BLOB" => Value::Bytes(row.try_get(i).map_err(err)?),
        _ => Value::Text(row.try_get(i).map_err(err)?),
    })
}

/// Accumulates result rows under the host's caps.
pub(crate) struct Collector<'a> {
    pub(crate) limits: &'a Limits,
    pub(crate) columns: Option<Vec<String>>,
    pub(crate) rows: Vec<Vec<Value>>,
    pub(crate) bytes: usize,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(limits: &'a Limits) -> Self {
        Self {
            limits,
            columns: None,
            rows: Vec::new(),
            bytes: 0,
        }
    }

    pub(crate) fn admit(&mut self, names: impl FnOnce() -> Vec<String>) -> Result<(), StoreError> {
        if self.rows.len() >= self.limits.max_rows {
            return Err(StoreError::Limit(format!(
                "the query returned more than {} rows; add a LIMIT or narrow the WHERE clause",
                self.limits.max_rows
            )));
        }
        if self.columns.is_none() {
            self.columns = Some(names());
        }
        Ok(())
    }

    /// Count `len` more bytes of result, before the host copies them.
    pub(crate) fn spend(&mut self, len: usize) -> Result<(), StoreError> {
        self.bytes = self.bytes.saturating_add(len);
        if self.bytes > self.limits.max_result_bytes {
            return Err(StoreError::Limit(format!(
                "the query returned more than {} bytes; select fewer columns or rows",
                self.limits.max_result_bytes
            )));
        }
        Ok(())
    }

    /// Decode a row cell by cell; each cell's size is charged against the
    /// byte cap from the driver's buffer, before the host copies it.
    pub(crate) fn push_row(
        &mut self,
        width: usize,
        mut cell: impl FnMut(usize, &mut Self) -> Result<Value, StoreError>,
    ) -> Result<(), StoreError> {
        let mut cells = Vec::with_capacity(width);
        for i in 0..width {
            let value = cell(i, self)?;
            cells.push(value);
        }
        self.rows.push(cells);
        Ok(())
    }

    pub(crate) fn push_pg(&mut self, row: &PgRow) -> Result<(), StoreError> {
        self.admit(|| row.columns().iter().map(|c| c.name().to_string()).collect())?;
        self.push_row(row.len(), |i, c| {
            let raw = row.try_get_raw(i).map_err(|e| decode_err("?", e))?;
            let len = if raw.is_null() {
                1
            } else {
                raw.as_bytes().map_or(0, <[u8]>::len).max(1)
            };
            c.spend(len)?;
            pg_cell(row, i)
        })
    }

    pub(crate) fn push_sqlite(&mut self, row: &SqliteRow) -> Result<(), StoreError> {
        self.admit(|| row.columns().iter().map(|c| c.name().to_string()).collect())?;
        self.push_row(row.len(), |i, c| {
            // Text and blobs are measured borrowed from the driver's
            // buffer, nothing copied yet; other storage classes are only
            // read for their class (reading an integer as bytes would
            // convert it in place).
            let raw = row.try_get_raw(i).map_err(|e| decode_err("?", e))?;
            let variable = !raw.is_null() && matches!(raw.type_info().name(), "TEXT" | "BLOB");
            let len = if variable {
                row.try_get_unchecked::<&[u8], _>(i).map_or(0, <[u8]>::len)
            } else {
                8
            };
            c.spend(len)?;
            sqlite_cell(row, i)
        })
    }

    pub(crate) fn finish(self) -> Rows {
        Rows {
            columns: self.columns.unwrap_or_default(),
            rows: self.rows,
        }
    }
}
