//! A collection's schema, inferred by sampling and widened as documents arrive (SPEC §6,
//! seeds/schema-mappings.txt "MongoDB → kyma", seeds/schema-model.txt).
//!
//! # The shape of a collection
//!
//! A [`Shape`] is the columns kyma reads a collection as, each a *path* into the document
//! with a [`Kind`]: the BSON types it reads, hence its kyma type. It is built from a
//! sample (`$sample`, [`SAMPLE_SIZE`] documents by default) and only ever widens:
//!
//! - `_id` is always the first column: the stringified `_id` ([`super::values::key_text`]),
//!   which is also `_kyma_pk`.
//! - Top-level fields are columns. A sub-document is flattened into dotted columns
//!   (`address.city`) while its depth is at most `scope.flatten_depth` (default 2, so
//!   `a.b.c` is a column and `a.b.c.d` sits in the dynamic column `a.b.c`) and every key
//!   in it is addressable (not empty, no `.`, not starting with `$`); otherwise it is one
//!   `dynamic` column. A top-level key holding `.` or starting with `"` is named in
//!   double quotes (`"a.b"`), so column names stay unambiguous.
//! - BSON types map per the seed table: Int32 → int; Int64 and Decimal128 holding an
//!   integer that fits → long; Double and other Decimal128 → real (`decimal128_mode:
//!   "string"` keeps Decimal128 as its text); ObjectId (24 hex digits), UUID, other binary
//!   (base64) and strings → string; dates and BSON timestamps → timestamp; arrays, deeper
//!   objects and the rare types (regex, code, symbol, min/max key, DB pointer) → dynamic.
//!   Null, undefined and missing fields say nothing about the type.
//! - Widening is a lattice: int ⊔ long = long; int or long ⊔ real = real; anything else
//!   that differs (a string where a number was, a document where a scalar was) makes the
//!   column `dynamic`: it "stops being promoted". The sync pipeline keeps the typed values
//!   already written and routes later ones to the `dynamic` copy.

use std::collections::HashMap;

use futures::TryStreamExt;
use kyma_catalog::{KymaType, ScopeSpec};
use mongodb::Client;
use mongodb::bson::{Bson, Document, doc, spec::BinarySubtype};

use super::refused;
use crate::error::ConnectorError;
use crate::sync::{SourceColumn, SourceTable, TableId};

/// Documents sampled per collection when the connector does not say.
pub const SAMPLE_SIZE: u32 = 1000;

/// Nesting depth flattened into dotted columns when the connector does not say.
pub const DEFAULT_FLATTEN_DEPTH: u32 = 2;

/// What a column reads: the BSON types it accepts and the kyma type they become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `_id`, stringified: any BSON type.
    Key,
    /// Int32 → int.
    Int,
    /// Int32, Int64, integral Decimal128 in range → long.
    Long,
    /// Any number → real.
    Real,
    /// Decimal128 as its text (`decimal128_mode: "string"`).
    DecimalText,
    /// Boolean.
    Bool,
    /// String.
    String,
    /// ObjectId → 24 hex digits.
    ObjectId,
    /// UUID (binary subtype 4) → its hyphenated text.
    Uuid,
    /// Other binary subtypes → base64.
    Binary,
    /// Date → timestamp (milliseconds).
    Date,
    /// BSON timestamp → timestamp (seconds).
    Timestamp,
    /// Anything, as `dynamic`.
    Dynamic,
}

impl Kind {
    /// The kyma type of the column.
    pub fn kyma_type(self) -> KymaType {
        match self {
            Kind::Int => KymaType::Int,
            Kind::Long => KymaType::Long,
            Kind::Real => KymaType::Real,
            Kind::Bool => KymaType::Bool,
            Kind::Key
            | Kind::DecimalText
            | Kind::String
            | Kind::ObjectId
            | Kind::Uuid
            | Kind::Binary => KymaType::String,
            Kind::Date | Kind::Timestamp => KymaType::Timestamp,
            Kind::Dynamic => KymaType::Dynamic,
        }
    }

    /// The kind a scalar `value` suggests (`None`: null, undefined, or a document, which
    /// flattens instead).
    pub fn of(value: &Bson, decimal_text: bool) -> Option<Kind> {
        Some(match value {
            Bson::Null | Bson::Undefined | Bson::Document(_) => return None,
            Bson::Int32(_) => Kind::Int,
            Bson::Int64(_) => Kind::Long,
            Bson::Double(_) => Kind::Real,
            Bson::Decimal128(_) if decimal_text => Kind::DecimalText,
            Bson::Decimal128(d) => match super::values::decimal_integer(d) {
                Some(_) => Kind::Long,
                None => Kind::Real,
            },
            Bson::Boolean(_) => Kind::Bool,
            Bson::String(_) => Kind::String,
            Bson::ObjectId(_) => Kind::ObjectId,
            Bson::Binary(b) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16 => {
                Kind::Uuid
            }
            Bson::Binary(_) => Kind::Binary,
            Bson::DateTime(_) => Kind::Date,
            Bson::Timestamp(_) => Kind::Timestamp,
            _ => Kind::Dynamic,
        })
    }

    /// The least kind that reads both (the widening lattice).
    pub fn join(self, other: Kind) -> Kind {
        use Kind::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Int, Long) | (Long, Int) => Long,
            (Int | Long | Real, Int | Long | Real) => Real,
            _ => Dynamic,
        }
    }

    /// The BSON type names (`$type`) of the values a column of this kind reads as typed
    /// values; empty for `_id` and `dynamic`, which read anything.
    pub fn bson_types(self) -> &'static [&'static str] {
        match self {
            Kind::Int => &["int"],
            Kind::Long => &["int", "long", "decimal"],
            Kind::Real => &["int", "long", "double", "decimal"],
            Kind::DecimalText => &["decimal"],
            Kind::Bool => &["bool"],
            Kind::String => &["string"],
            Kind::ObjectId => &["objectId"],
            Kind::Uuid | Kind::Binary => &["binData"],
            Kind::Date => &["date"],
            Kind::Timestamp => &["timestamp"],
            Kind::Key | Kind::Dynamic => &[],
        }
    }

    fn rare(value: &Bson) -> Option<&'static str> {
        Some(match value {
            Bson::RegularExpression(_) => "regular expression",
            Bson::JavaScriptCode(_) | Bson::JavaScriptCodeWithScope(_) => "JavaScript code",
            Bson::Symbol(_) => "symbol",
            Bson::MinKey | Bson::MaxKey => "min/max key",
            Bson::DbPointer(_) => "DB pointer",
            _ => return None,
        })
    }
}

/// One column: where it reads in the document and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldColumn {
    /// The column name: the path's keys joined with `.` (a top-level key holding `.` or
    /// starting with `"` in double quotes).
    pub name: String,
    /// The keys leading to the value, from the document's top.
    pub path: Vec<String>,
    /// What it reads.
    pub kind: Kind,
    /// Why it reads as `dynamic`, when that is not its nature (a conflict, a rare type).
    pub warning: Option<String>,
}

impl FieldColumn {
    /// Whether the query language can address the path (`{"a.b": …}`): no key in it holds
    /// a `.` or starts with `$`.
    pub fn addressable(&self) -> bool {
        self.path.iter().all(|k| addressable_key(k))
    }

    /// The column as the sync seam describes it.
    pub fn source_column(&self) -> SourceColumn {
        SourceColumn {
            name: self.name.clone(),
            ty: self.kind.kyma_type(),
            warning: self.warning.clone(),
        }
    }
}

/// Whether a key can be a step of a dotted path in the query language.
pub fn addressable_key(key: &str) -> bool {
    !key.is_empty() && !key.contains('.') && !key.starts_with('$')
}

/// The name of the column at `path`.
fn column_name(path: &[String]) -> String {
    path.iter()
        .map(|key| {
            if key.contains('.') || key.starts_with('"') {
                format!("\"{}\"", key.replace('"', "\"\""))
            } else {
                key.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// How documents are read into columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeOptions {
    /// Sub-documents nested at most this deep flatten into dotted columns.
    pub flatten_depth: u32,
    /// Decimal128 reads as its text.
    pub decimal_text: bool,
}

impl ShapeOptions {
    /// The options `scope` sets (`flatten_depth`, `decimal128_mode`).
    pub fn of(scope: &ScopeSpec) -> Result<Self, ConnectorError> {
        let decimal_text = match scope.decimal128_mode.as_deref() {
            None | Some("number") => false,
            Some("string") => true,
            Some(other) => {
                return Err(ConnectorError::invalid(
                    "scope.decimal128_mode",
                    format!("`{other}` is not a mode; use number (the default) or string"),
                ));
            }
        };
        Ok(Self {
            flatten_depth: scope.flatten_depth.unwrap_or(DEFAULT_FLATTEN_DEPTH),
            decimal_text,
        })
    }
}

impl Default for ShapeOptions {
    fn default() -> Self {
        Self {
            flatten_depth: DEFAULT_FLATTEN_DEPTH,
            decimal_text: false,
        }
    }
}

/// The columns a collection reads as (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    options: ShapeOptions,
    columns: Vec<FieldColumn>,
    by_name: HashMap<String, usize>,
}

impl Shape {
    /// A shape with only `_id`.
    pub fn new(options: ShapeOptions) -> Self {
        let mut shape = Self {
            options,
            columns: Vec::new(),
            by_name: HashMap::new(),
        };
        shape.push(vec!["_id".into()], Kind::Key, None);
        shape
    }

    /// The shape of `documents`.
    pub fn infer<'a>(
        options: ShapeOptions,
        documents: impl IntoIterator<Item = &'a Document>,
    ) -> Self {
        let mut shape = Self::new(options);
        for document in documents {
            shape.observe(document);
        }
        shape
    }

    /// The options it reads documents with.
    pub fn options(&self) -> ShapeOptions {
        self.options
    }

    /// Its columns, `_id` first.
    pub fn columns(&self) -> &[FieldColumn] {
        &self.columns
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&FieldColumn> {
        self.by_name.get(name).map(|i| &self.columns[*i])
    }

    /// The columns as the sync seam describes them.
    pub fn source_columns(&self) -> Vec<SourceColumn> {
        self.columns
            .iter()
            .map(FieldColumn::source_column)
            .collect()
    }

    /// What the status should say about columns that fell back to `dynamic`.
    pub fn warnings(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter_map(|c| c.warning.as_ref().map(|w| format!("`{}` {w}", c.name)))
            .collect()
    }

    /// Widens the shape to read whatever `other` reads (a fresh sample's shape).
    pub fn absorb(&mut self, other: &Shape) {
        for column in other.columns.iter().skip(1) {
            self.widen(column.path.clone(), column.kind, column.warning.as_deref());
        }
    }

    /// Widens the shape to read `document`; `true` when it changed.
    pub fn observe(&mut self, document: &Document) -> bool {
        let mut changed = false;
        for (key, value) in document {
            if key != "_id" {
                changed |= self.observe_value(vec![key.clone()], value);
            }
        }
        changed
    }

    fn observe_value(&mut self, path: Vec<String>, value: &Bson) -> bool {
        let name = column_name(&path);
        if let Bson::Document(inner) = value {
            if self.by_name.contains_key(&name) || !self.flattens(path.len(), inner) {
                return self.widen(path, Kind::Dynamic, Some("holds documents"));
            }
            let mut changed = false;
            for (key, nested) in inner {
                let mut deeper = path.clone();
                deeper.push(key.clone());
                changed |= self.observe_value(deeper, nested);
            }
            return changed;
        }
        match Kind::of(value, self.options.decimal_text) {
            Some(Kind::Dynamic) => {
                let why = Kind::rare(value).map(|rare| format!("holds a {rare} (rare)"));
                self.widen(path, Kind::Dynamic, why.as_deref())
            }
            Some(kind) => self.widen(path, kind, None),
            None => false,
        }
    }

    /// Whether a sub-document at `depth` (a top-level field's value is at depth 1) flattens.
    fn flattens(&self, depth: usize, inner: &Document) -> bool {
        depth <= self.options.flatten_depth as usize && inner.keys().all(|k| addressable_key(k))
    }

    /// Widens (or adds) the column at `path` to hold `kind`; `true` when it changed.
    fn widen(&mut self, path: Vec<String>, kind: Kind, why: Option<&str>) -> bool {
        let name = column_name(&path);
        let Some(&index) = self.by_name.get(&name) else {
            let warning = why
                .filter(|_| kind == Kind::Dynamic)
                .map(|w| format!("{w}; reads as dynamic"));
            self.push(path, kind, warning);
            return true;
        };
        let column = &mut self.columns[index];
        let joined = column.kind.join(kind);
        if joined == column.kind {
            return false;
        }
        if joined == Kind::Dynamic && column.kind != Kind::Dynamic {
            column.warning = Some(format!(
                "was seen as {} and as {}; reads as dynamic from then on",
                column.kind.kyma_type(),
                if kind == Kind::Dynamic {
                    "nested or mixed values".into()
                } else {
                    kind.kyma_type().to_string()
                }
            ));
        }
        column.kind = joined;
        true
    }

    fn push(&mut self, path: Vec<String>, kind: Kind, warning: Option<String>) {
        let name = column_name(&path);
        self.by_name.insert(name.clone(), self.columns.len());
        self.columns.push(FieldColumn {
            name,
            path,
            kind,
            warning,
        });
    }
}

/// A collection in scope with its inferred shape.
#[derive(Debug, Clone)]
pub struct Collection {
    /// The database and collection.
    pub id: TableId,
    /// How its documents read.
    pub shape: Shape,
    /// The server's count estimate.
    pub estimated_rows: u64,
    /// Whether it records pre- and post-images for change streams.
    pub images: bool,
}

impl Collection {
    /// The collection as the sync seam describes it (key `_id`).
    pub fn source_table(&self) -> SourceTable {
        SourceTable {
            id: self.id.clone(),
            columns: self.shape.source_columns(),
            key: vec!["_id".into()],
            estimated_rows: self.estimated_rows,
        }
    }
}

/// The databases in scope: those named, or every database but MongoDB's own.
pub async fn databases(client: &Client, scope: &ScopeSpec) -> Result<Vec<String>, ConnectorError> {
    if !scope.include_schemas.is_empty() {
        return Ok(scope.include_schemas.clone());
    }
    let names = client
        .list_database_names()
        .authorized_databases(true)
        .await
        .map_err(refused)?;
    Ok(names
        .into_iter()
        .filter(|n| !matches!(n.as_str(), "admin" | "local" | "config"))
        .collect())
}

/// The collections in scope, each sampled into its shape.
pub async fn discover(
    client: &Client,
    scope: &ScopeSpec,
) -> Result<Vec<Collection>, ConnectorError> {
    let options = ShapeOptions::of(scope)?;
    let mut found = Vec::new();
    for database in databases(client, scope).await? {
        let db = client.database(&database);
        let mut listed = db
            .list_collections()
            .filter(doc! { "type": "collection" })
            .await
            .map_err(refused)?;
        while let Some(spec) = listed.try_next().await.map_err(refused)? {
            if spec.name.starts_with("system.") || !scope.covers(&database, &spec.name) {
                continue;
            }
            let images = spec
                .options
                .change_stream_pre_and_post_images
                .is_some_and(|o| o.enabled);
            let id = TableId::new(database.clone(), spec.name);
            found.push(sample(client, id, options, images).await?);
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(found)
}

/// Samples collection `id` into its shape.
async fn sample(
    client: &Client,
    id: TableId,
    options: ShapeOptions,
    images: bool,
) -> Result<Collection, ConnectorError> {
    let collection = client
        .database(&id.schema)
        .collection::<Document>(&id.table);
    let estimated_rows = collection
        .estimated_document_count()
        .await
        .map_err(refused)?;
    let mut cursor = collection
        .aggregate([doc! { "$sample": { "size": SAMPLE_SIZE } }])
        .await
        .map_err(refused)?;
    let mut shape = Shape::new(options);
    while let Some(document) = cursor.try_next().await.map_err(refused)? {
        shape.observe(&document);
    }
    Ok(Collection {
        id,
        shape,
        estimated_rows,
        images,
    })
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{Decimal128, oid::ObjectId};

    use super::*;

    fn kinds(shape: &Shape) -> Vec<(String, Kind)> {
        shape
            .columns()
            .iter()
            .map(|c| (c.name.clone(), c.kind))
            .collect()
    }

    #[test]
    fn bson_types_map_per_the_seed_table() {
        let document = doc! {
            "_id": ObjectId::new(),
            "i": 1_i32, "l": 2_i64, "d": 1.5, "b": true, "s": "x",
            "o": ObjectId::new(), "when": mongodb::bson::DateTime::from_millis(1),
            "ts": mongodb::bson::Timestamp { time: 1, increment: 2 },
            "u": Bson::Binary(mongodb::bson::Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] }),
            "bin": Bson::Binary(mongodb::bson::Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2] }),
            "dec_int": "42".parse::<Decimal128>().expect("test input"),
            "dec_frac": "4.2".parse::<Decimal128>().expect("test input"),
            "arr": [1, 2],
            "re": Bson::RegularExpression(mongodb::bson::Regex { pattern: "a".into(), options: "i".into() }),
            "nothing": Bson::Null,
        };
        let shape = Shape::infer(ShapeOptions::default(), [&document]);
        let types: Vec<(String, KymaType)> = shape
            .columns()
            .iter()
            .map(|c| (c.name.clone(), c.kind.kyma_type()))
            .collect();
        let expected = [
            ("_id", KymaType::String),
            ("i", KymaType::Int),
            ("l", KymaType::Long),
            ("d", KymaType::Real),
            ("b", KymaType::Bool),
            ("s", KymaType::String),
            ("o", KymaType::String),
            ("when", KymaType::Timestamp),
            ("ts", KymaType::Timestamp),
            ("u", KymaType::String),
            ("bin", KymaType::String),
            ("dec_int", KymaType::Long),
            ("dec_frac", KymaType::Real),
            ("arr", KymaType::Dynamic),
            ("re", KymaType::Dynamic),
        ];
        let expected: Vec<(String, KymaType)> =
            expected.iter().map(|(n, t)| (n.to_string(), *t)).collect();
        assert_eq!(types, expected, "a null field makes no column");
        assert_eq!(
            shape.warnings(),
            vec!["`re` holds a regular expression (rare); reads as dynamic"]
        );
    }

    #[test]
    fn decimal128_mode_string_keeps_the_text() {
        let options = ShapeOptions {
            decimal_text: true,
            ..ShapeOptions::default()
        };
        let document =
            doc! { "_id": 1, "price": "4.20".parse::<Decimal128>().expect("test input") };
        let shape = Shape::infer(options, [&document]);
        assert_eq!(
            shape.column("price").map(|c| c.kind),
            Some(Kind::DecimalText)
        );
        let scope = ScopeSpec {
            decimal128_mode: Some("float".into()),
            ..ScopeSpec::default()
        };
        let e = ShapeOptions::of(&scope).expect_err("must fail");
        assert_eq!(e.field(), Some("scope.decimal128_mode"));
    }

    #[test]
    fn numbers_widen_and_conflicts_become_dynamic() {
        let documents = [
            doc! { "_id": 1, "n": 1_i32, "m": 1_i32, "x": 1_i32 },
            doc! { "_id": 2, "n": 2_i64, "m": 2.5, "x": "two" },
            doc! { "_id": 3, "n": Bson::Null },
        ];
        let shape = Shape::infer(ShapeOptions::default(), &documents);
        assert_eq!(
            kinds(&shape)[1..],
            [
                ("n".into(), Kind::Long),
                ("m".into(), Kind::Real),
                ("x".into(), Kind::Dynamic)
            ]
        );
        assert_eq!(
            shape.warnings(),
            vec!["`x` was seen as int and as string; reads as dynamic from then on"]
        );
    }

    #[test]
    fn documents_flatten_to_the_configured_depth() {
        let document = doc! {
            "_id": 1,
            "a": { "b": { "c": 1, "d": { "e": 1 } }, "f": "x" },
            "odd": { "k.ey": 1 },
            "dotted.top": 5,
            "\"quoted": 6,
            "$weird": 7,
        };
        let shape = Shape::infer(ShapeOptions::default(), [&document]);
        assert_eq!(
            kinds(&shape)[1..],
            [
                ("a.b.c".into(), Kind::Int),
                ("a.b.d".into(), Kind::Dynamic),
                ("a.f".into(), Kind::String),
                ("odd".into(), Kind::Dynamic),
                ("\"dotted.top\"".into(), Kind::Int),
                ("\"\"\"quoted\"".into(), Kind::Int),
                ("$weird".into(), Kind::Int),
            ]
        );
        assert_eq!(
            shape.column("a.b.d").map(|c| c.path.clone()),
            Some(vec!["a".into(), "b".into(), "d".into()])
        );
        assert!(!shape.column("$weird").is_some_and(FieldColumn::addressable));
        assert!(shape.column("a.b.c").is_some_and(FieldColumn::addressable));
        let flat = ShapeOptions {
            flatten_depth: 0,
            ..ShapeOptions::default()
        };
        let shape = Shape::infer(flat, [&document]);
        assert_eq!(shape.column("a").map(|c| c.kind), Some(Kind::Dynamic));
    }

    #[test]
    fn a_field_seen_as_scalar_and_document_becomes_dynamic() {
        let documents = [
            doc! { "_id": 1, "a": 5 },
            doc! { "_id": 2, "a": { "b": 1 } },
        ];
        let mut shape = Shape::infer(ShapeOptions::default(), &documents[..1]);
        assert!(shape.observe(&documents[1]));
        assert_eq!(shape.column("a").map(|c| c.kind), Some(Kind::Dynamic));
        assert!(shape.column("a.b").is_none());
        assert!(
            !shape.observe(&documents[1]),
            "seen before: nothing changes"
        );
    }
}
