//! Result rows decoded into plugin types with serde: a row is a map from
//! column name to cell (or a sequence of cells, for a tuple), and each cell
//! decodes by what the field asks for.
//!
//! The cells are read so that one struct decodes the same row on both
//! backends, whose cells differ for the same column:
//!
//! - a `timestamp` is RFC 3339 text (PostgreSQL hands over microseconds,
//!   SQLite the text the host stored; [`crate::rfc3339_text`] writes the
//!   former as the latter), so a `String` field reads the same on both;
//! - a `bool` field takes `0` and `1` (SQLite's booleans, and the value of
//!   a comparison there);
//! - a struct, map, `Vec` or enum field takes a `json` cell or text holding
//!   JSON (a `jsonb` column on PostgreSQL is text on SQLite); a `String`
//!   field takes the JSON text as it is;
//! - a unit-only enum field takes text naming the variant;
//! - `bytes` go to `Vec<u8>` (or a byte-buffer type); text, uuid and date
//!   cells to strings; NULL to `None` of an `Option` field.
//!
//! A failure names the column and what did not fit.

use crate::bindings::switchyard::plugin::db::Value;
use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Unexpected,
    Visitor,
};
use std::fmt;

/// Why a row did not decode.
#[derive(Debug)]
pub(crate) struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        DecodeError(format!("no column {field} in the result"))
    }
}

/// Decode one row, given its column names and cells, into `T`.
pub(crate) fn decode<T: de::DeserializeOwned>(
    columns: &[String],
    cells: &[Value],
) -> Result<T, DecodeError> {
    T::deserialize(RowDeserializer { columns, cells })
}

/// `T`'s name without module paths (`Note`, `(String, i64)`), for messages.
pub(crate) fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut word = String::new();
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else if c == ':' && chars.peek() == Some(&':') {
            // `a::b`: the path so far is dropped.
            chars.next();
            word.clear();
        } else {
            out.push_str(&word);
            word.clear();
            out.push(c);
        }
    }
    out.push_str(&word);
    out
}

/// A whole row: a map of columns, a sequence of cells, or (a single
/// column) that column's cell.
struct RowDeserializer<'a> {
    columns: &'a [String],
    cells: &'a [Value],
}

impl<'a> RowDeserializer<'a> {
    /// The single cell of a one-column row, for a scalar or an `Option`.
    fn only_cell(&self, wanted: &dyn de::Expected) -> Result<Cell<'a>, DecodeError> {
        match (self.columns, self.cells) {
            ([column], [value]) => Ok(Cell { column, value }),
            _ => Err(DecodeError(format!(
                "a row of {} columns is not {wanted}: select one column, or decode into a struct or a tuple",
                self.cells.len()
            ))),
        }
    }
}

macro_rules! one_column {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
                let cell = self.only_cell(&visitor)?;
                cell.in_column(|c| c.$method(visitor))
            }
        )*
    };
}

impl<'a> Deserializer<'a> for RowDeserializer<'a> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_map(Columns {
            columns: self.columns.iter(),
            cells: self.cells.iter(),
            current: None,
        })
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_seq(Cells {
            columns: self.columns,
            cells: self.cells,
            at: 0,
        })
    }

    fn deserialize_tuple<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let cell = self.only_cell(&visitor)?;
        cell.in_column(|c| c.deserialize_unit_struct(name, visitor))
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let cell = self.only_cell(&visitor)?;
        cell.in_column(|c| c.deserialize_enum(name, variants, visitor))
    }

    one_column! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_option
        deserialize_unit
    }

    serde::forward_to_deserialize_any! { <W: Visitor<'a>> map struct identifier ignored_any }
}

/// The columns of a row as a map.
struct Columns<'a, I: Iterator<Item = &'a String>, J: Iterator<Item = &'a Value>> {
    columns: I,
    cells: J,
    current: Option<Cell<'a>>,
}

impl<'a, I, J> MapAccess<'a> for Columns<'a, I, J>
where
    I: Iterator<Item = &'a String>,
    J: Iterator<Item = &'a Value>,
{
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let (Some(column), Some(value)) = (self.columns.next(), self.cells.next()) else {
            return Ok(None);
        };
        self.current = Some(Cell { column, value });
        seed.deserialize(column.as_str().into_deserializer())
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'a>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, DecodeError> {
        let cell = self
            .current
            .take()
            .ok_or_else(|| DecodeError("a value asked for before its column".into()))?;
        cell.in_column(|c| seed.deserialize(c))
    }
}

/// The cells of a row as a sequence (a tuple).
struct Cells<'a> {
    columns: &'a [String],
    cells: &'a [Value],
    at: usize,
}

impl<'a> SeqAccess<'a> for Cells<'a> {
    type Error = DecodeError;

    fn next_element_seed<S: DeserializeSeed<'a>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, DecodeError> {
        let Some(value) = self.cells.get(self.at) else {
            return Ok(None);
        };
        let column = self.columns.get(self.at).map_or("?", String::as_str);
        self.at += 1;
        Cell { column, value }
            .in_column(|c| seed.deserialize(c))
            .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.cells.len() - self.at)
    }
}

/// One cell, and the column it is in (for messages).
#[derive(Clone, Copy)]
struct Cell<'a> {
    column: &'a str,
    value: &'a Value,
}

impl<'a> Cell<'a> {
    /// Run `f` on the cell's deserializer; a failure names the column.
    fn in_column<T>(
        self,
        f: impl FnOnce(CellDeserializer<'a>) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        f(CellDeserializer(self.value))
            .map_err(|e| DecodeError(format!("column {}: {e}", self.column)))
    }
}

/// One cell, decoded by what the field asks for.
struct CellDeserializer<'a>(&'a Value);

impl<'a> CellDeserializer<'a> {
    /// NULL where the field takes no `None`.
    fn null<T>(visitor: &dyn de::Expected) -> Result<T, DecodeError> {
        Err(de::Error::invalid_type(Unexpected::Other("NULL"), visitor))
    }

    /// The JSON text of a `json` or text cell, for a structured field.
    fn json_text(&self) -> Option<&'a str> {
        match self.0 {
            Value::Json(s) | Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// A failure inside a JSON cell.
fn json_error(e: serde_json::Error) -> DecodeError {
    DecodeError(format!("JSON text does not fit: {e}"))
}

macro_rules! not_null {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
                match self.0 {
                    Value::Null => Self::null(&visitor),
                    _ => self.deserialize_any(visitor),
                }
            }
        )*
    };
}

/// Parse `text` as JSON and hand it to `f` (a structured field).
fn from_json<'a, T>(
    text: &'a str,
    f: impl FnOnce(
        &mut serde_json::Deserializer<serde_json::de::StrRead<'a>>,
    ) -> Result<T, serde_json::Error>,
) -> Result<T, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = f(&mut de).map_err(json_error)?;
    de.end().map_err(json_error)?;
    Ok(value)
}

impl<'a> Deserializer<'a> for CellDeserializer<'a> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Boolean(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Text(s) | Value::Json(s) | Value::Uuid(s) | Value::Date(s) => {
                visitor.visit_borrowed_str(s)
            }
            Value::Bytes(b) => visitor.visit_borrowed_bytes(b),
            Value::Timestamp(us) => visitor.visit_string(crate::rfc3339_text(*us)),
        }
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Int(0) => visitor.visit_bool(false),
            Value::Int(1) => visitor.visit_bool(true),
            Value::Null => Self::null(&visitor),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Bytes(b) => {
                visitor.visit_seq(de::value::SeqDeserializer::new(b.iter().copied()))
            }
            Value::Null => Self::null(&visitor),
            _ => match self.json_text() {
                Some(text) => from_json(text, |de| de.deserialize_seq(visitor)),
                None => self.deserialize_any(visitor),
            },
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match (self.0, self.json_text()) {
            (Value::Null, _) => Self::null(&visitor),
            (_, Some(text)) => from_json(text, |de| de.deserialize_map(visitor)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        match (self.0, self.json_text()) {
            (Value::Null, _) => Self::null(&visitor),
            (_, Some(text)) => from_json(text, |de| de.deserialize_struct(name, fields, visitor)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Null => Self::null(&visitor),
            // A JSON document (`{"Variant": ...}` or `"Variant"`) …
            Value::Json(s) => from_json(s, |de| de.deserialize_enum(name, variants, visitor)),
            Value::Text(s) if s.trim_start().starts_with(['{', '"']) => {
                from_json(s, |de| de.deserialize_enum(name, variants, visitor))
            }
            // … or plain text naming a unit variant (`ACTIVE`).
            Value::Text(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            Value::Null => Self::null(&visitor),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    not_null! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_identifier
    }

    serde::forward_to_deserialize_any! { <W: Visitor<'a>> unit unit_struct }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    fn columns(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Prefs {
        lang: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[allow(clippy::upper_case_acronyms)]
    enum Status {
        ACTIVE,
        BLOCKED,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Account {
        id: String,
        n: i64,
        ratio: f64,
        owner: bool,
        at: String,
        born: Option<String>,
        prefs: Prefs,
        tags: Vec<String>,
        status: Status,
        raw: Vec<u8>,
        #[serde(default)]
        absent: Option<i32>,
    }

    /// The same account as PostgreSQL and as SQLite hand it over.
    fn backends() -> [(&'static str, Vec<Value>); 2] {
        [
            (
                "postgres",
                vec![
                    Value::Text("u1".into()),
                    Value::Int(3),
                    Value::Float(0.5),
                    Value::Boolean(true),
                    Value::Timestamp(1_796_031_000_500_000),
                    Value::Date("1990-05-01".into()),
                    Value::Json(r#"{"lang":"fa"}"#.into()),
                    Value::Json(r#"["a","b"]"#.into()),
                    Value::Text("ACTIVE".into()),
                    Value::Bytes(vec![0, 255]),
                ],
            ),
            (
                "sqlite",
                vec![
                    Value::Text("u1".into()),
                    Value::Int(3),
                    Value::Float(0.5),
                    Value::Int(1),
                    Value::Text("2026-11-30T09:30:00.500+00:00".into()),
                    Value::Text("1990-05-01".into()),
                    Value::Text(r#"{"lang":"fa"}"#.into()),
                    Value::Text(r#"["a","b"]"#.into()),
                    Value::Text("ACTIVE".into()),
                    Value::Bytes(vec![0, 255]),
                ],
            ),
        ]
    }

    const ACCOUNT: &[&str] = &[
        "id", "n", "ratio", "owner", "at", "born", "prefs", "tags", "status", "raw",
    ];

    #[test]
    fn one_struct_decodes_the_row_of_either_backend() {
        for (backend, cells) in backends() {
            let account: Account =
                decode(&columns(ACCOUNT), &cells).unwrap_or_else(|e| panic!("{backend}: {e}"));
            assert_eq!(
                account,
                Account {
                    id: "u1".into(),
                    n: 3,
                    ratio: 0.5,
                    owner: true,
                    at: "2026-11-30T09:30:00.500+00:00".into(),
                    born: Some("1990-05-01".into()),
                    prefs: Prefs { lang: "fa".into() },
                    tags: vec!["a".into(), "b".into()],
                    status: Status::ACTIVE,
                    raw: vec![0, 255],
                    absent: None,
                },
                "{backend}"
            );
        }
    }

    #[test]
    fn maps_tuples_and_single_columns() {
        let cols = columns(&["a", "b"]);
        let cells = vec![Value::Text("x".into()), Value::Null];
        let map: BTreeMap<String, Option<String>> =
            decode(&cols, &cells).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(map.get("a"), Some(&Some("x".to_string())));
        assert_eq!(map.get("b"), Some(&None));
        let pair: (String, Option<i64>) = decode(&cols, &cells).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pair, ("x".to_string(), None));
        let json: serde_json::Value = decode(&cols, &cells).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json, serde_json::json!({"a": "x", "b": null}));
        let count: i64 =
            decode(&columns(&["n"]), &[Value::Int(7)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count, 7);
        let max: Option<i64> =
            decode(&columns(&["m"]), &[Value::Null]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(max, None);
        let status: Status = decode(&columns(&["s"]), &[Value::Text("BLOCKED".into())])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, Status::BLOCKED);
        #[derive(Debug, Deserialize, PartialEq)]
        struct Count(i64);
        let wrapped: Count =
            decode(&columns(&["n"]), &[Value::Int(2)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wrapped, Count(2));
    }

    #[test]
    fn failures_name_the_column_and_the_reason() {
        let err = |cols: &[&str], cells: Vec<Value>| {
            decode::<Account>(&columns(cols), &cells)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let mut cells = backends()[0].1.clone();
        cells[1] = Value::Null;
        assert_eq!(
            err(ACCOUNT, cells),
            "column n: invalid type: NULL, expected i64"
        );
        let mut cells = backends()[0].1.clone();
        cells[1] = Value::Text("3".into());
        assert_eq!(
            err(ACCOUNT, cells),
            "column n: invalid type: string \"3\", expected i64"
        );
        let mut cells = backends()[1].1.clone();
        cells[3] = Value::Int(2);
        assert_eq!(
            err(ACCOUNT, cells),
            "column owner: invalid type: integer `2`, expected a boolean"
        );
        let mut cells = backends()[1].1.clone();
        cells[6] = Value::Text("{\"lang\": 1}".into());
        assert!(
            err(ACCOUNT, cells)
                .starts_with("column prefs: JSON text does not fit: invalid type: integer `1`"),
        );
        let mut cells = backends()[1].1.clone();
        cells[8] = Value::Text("GONE".into());
        assert!(err(ACCOUNT, cells).starts_with("column status: unknown variant `GONE`"));
        assert_eq!(
            err(&ACCOUNT[..3], backends()[0].1[..3].to_vec()),
            "no column owner in the result"
        );
        let two: Result<i64, _> = decode(&columns(&["a", "b"]), &[Value::Int(1), Value::Int(2)]);
        assert!(
            two.err()
                .is_some_and(|e| e.to_string().starts_with("a row of 2 columns is not i64")),
        );
    }

    #[test]
    fn type_names_lose_their_paths() {
        assert_eq!(short_type_name::<Account>(), "Account");
        assert_eq!(
            short_type_name::<(String, Option<i64>)>(),
            "(String, Option<i64>)"
        );
        assert_eq!(short_type_name::<Vec<Prefs>>(), "Vec<Prefs>");
    }
}
