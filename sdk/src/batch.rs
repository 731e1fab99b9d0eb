//! Record-batch level helpers: find columns by name, filter rows, add,
//! replace, rename and drop columns.

use crate::column::{PrimitiveView, VarLenView};
use crate::{Column, ColumnValues, DataType, Error, Field, RecordBatch, Schema};

/// Relations between a [`DataType`] and the [`ColumnValues`] that carry it.
pub trait DataTypeExt {
    /// The data type a column of `values` has (`timestamp` gets no zone).
    fn of_values(values: &ColumnValues) -> DataType;
    /// Whether `values` is the case that carries this type.
    fn matches(&self, values: &ColumnValues) -> bool;
    /// The type's name as written in WIT (`int64`, `utf8`...).
    fn name(&self) -> &'static str;
}

impl DataTypeExt for DataType {
    fn of_values(values: &ColumnValues) -> DataType {
        match values {
            ColumnValues::Boolean(_) => DataType::Boolean,
            ColumnValues::Int64(_) => DataType::Int64,
            ColumnValues::Float64(_) => DataType::Float64,
            ColumnValues::Utf8(_) => DataType::Utf8,
            ColumnValues::Binary(_) => DataType::Binary,
            ColumnValues::Timestamp(_) => DataType::Timestamp(None),
            ColumnValues::Date32(_) => DataType::Date32,
        }
    }

    fn matches(&self, values: &ColumnValues) -> bool {
        matches!(
            (self, values),
            (DataType::Boolean, ColumnValues::Boolean(_))
                | (DataType::Int64, ColumnValues::Int64(_))
                | (DataType::Float64, ColumnValues::Float64(_))
                | (DataType::Utf8, ColumnValues::Utf8(_))
                | (DataType::Binary, ColumnValues::Binary(_))
                | (DataType::Timestamp(_), ColumnValues::Timestamp(_))
                | (DataType::Date32, ColumnValues::Date32(_))
        )
    }

    fn name(&self) -> &'static str {
        match self {
            DataType::Boolean => "boolean",
            DataType::Int64 => "int64",
            DataType::Float64 => "float64",
            DataType::Utf8 => "utf8",
            DataType::Binary => "binary",
            DataType::Timestamp(_) => "timestamp",
            DataType::Date32 => "date32",
        }
    }
}

impl RecordBatch {
    /// A batch of `num_rows` rows from fields and their columns.
    ///
    /// # Errors
    /// [`Error::Internal`] when the counts differ or a column's values do not
    /// carry its field's type.
    pub fn try_new(fields: Vec<Field>, columns: Vec<Column>, num_rows: u32) -> Result<Self, Error> {
        if fields.len() != columns.len() {
            return Err(Error::Internal(format!(
                "{} fields but {} columns",
                fields.len(),
                columns.len()
            )));
        }
        if let Some(field) = fields
            .iter()
            .zip(&columns)
            .find(|(f, c)| !f.data_type.matches(&c.values))
        {
            return Err(Error::Internal(format!(
                "column `{}` is declared {} but carries other values",
                field.0.name,
                field.0.data_type.name()
            )));
        }
        Ok(RecordBatch {
            schema: Schema { fields },
            num_rows,
            columns,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.num_rows as usize
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.num_rows == 0
    }

    /// Position of the column called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.schema.fields.iter().position(|f| f.name == name)
    }

    /// The column called `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the column when there is none.
    pub fn column(&self, name: &str) -> Result<&Column, Error> {
        self.index_of(name)
            .map(|i| &self.columns[i])
            .ok_or_else(|| Error::InvalidInput(format!("the batch has no column `{name}`")))
    }

    /// The `int64` column called `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it is missing or of another type.
    pub fn int64(&self, name: &str) -> Result<PrimitiveView<'_, i64>, Error> {
        self.column(name)?
            .as_int64()
            .ok_or_else(|| self.wrong_type(name, "int64"))
    }

    /// The `float64` column called `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it is missing or of another type.
    pub fn float64(&self, name: &str) -> Result<PrimitiveView<'_, f64>, Error> {
        self.column(name)?
            .as_float64()
            .ok_or_else(|| self.wrong_type(name, "float64"))
    }

    /// The `utf8` column called `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it is missing or of another type.
    pub fn utf8(&self, name: &str) -> Result<VarLenView<'_>, Error> {
        self.column(name)?
            .as_utf8()
            .ok_or_else(|| self.wrong_type(name, "utf8"))
    }

    fn wrong_type(&self, name: &str, wanted: &str) -> Error {
        let actual = self
            .index_of(name)
            .map(|i| self.schema.fields[i].data_type.name())
            .unwrap_or("missing");
        Error::InvalidInput(format!("column `{name}` is {actual}, expected {wanted}"))
    }

    /// The rows at `indices`, in that order.
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn take(&self, indices: &[usize]) -> RecordBatch {
        RecordBatch {
            schema: self.schema.clone(),
            num_rows: u32::try_from(indices.len()).expect("a batch holds at most u32::MAX rows"),
            columns: self.columns.iter().map(|c| c.take(indices)).collect(),
        }
    }

    /// The rows whose `keep` entry is true. `keep` has one entry per row.
    pub fn filter(&self, keep: &[bool]) -> RecordBatch {
        let indices: Vec<usize> = keep
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i)
            .collect();
        if indices.len() == self.len() {
            return self.clone();
        }
        self.take(&indices)
    }

    /// Appends a column, or replaces the one of the same name.
    ///
    /// # Errors
    /// [`Error::Internal`] when the column's type differs from the field's.
    pub fn with_column(mut self, field: Field, column: Column) -> Result<RecordBatch, Error> {
        if !field.data_type.matches(&column.values) {
            return Err(Error::Internal(format!(
                "column `{}` is declared {} but carries other values",
                field.name,
                field.data_type.name()
            )));
        }
        match self.index_of(&field.name) {
            Some(i) => {
                self.schema.fields[i] = field;
                self.columns[i] = column;
            }
            None => {
                self.schema.fields.push(field);
                self.columns.push(column);
            }
        }
        Ok(self)
    }

    /// Replaces the column called `name` by `column`, whose type may differ;
    /// the field keeps its name and becomes nullable if `column` has nulls.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when there is no such column.
    pub fn replace_column(self, name: &str, column: Column) -> Result<RecordBatch, Error> {
        let i = self
            .index_of(name)
            .ok_or_else(|| Error::InvalidInput(format!("the batch has no column `{name}`")))?;
        let old = &self.schema.fields[i];
        let data_type = match (&old.data_type, &column.values) {
            (DataType::Timestamp(zone), ColumnValues::Timestamp(_)) => {
                DataType::Timestamp(zone.clone())
            }
            (_, values) => DataType::of_values(values),
        };
        let field = Field {
            name: name.to_string(),
            data_type,
            nullable: old.nullable || column.validity.is_some(),
        };
        self.with_column(field, column)
    }

    /// Renames column `from` to `to`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `from` is missing or `to` already exists.
    pub fn rename_column(mut self, from: &str, to: &str) -> Result<RecordBatch, Error> {
        if self.index_of(to).is_some() {
            return Err(Error::InvalidInput(format!(
                "cannot rename `{from}` to `{to}`: `{to}` exists"
            )));
        }
        let i = self
            .index_of(from)
            .ok_or_else(|| Error::InvalidInput(format!("the batch has no column `{from}`")))?;
        self.schema.fields[i].name = to.to_string();
        Ok(self)
    }

    /// Keeps only the named columns, in the given order.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first missing column.
    pub fn select(&self, names: &[impl AsRef<str>]) -> Result<RecordBatch, Error> {
        let mut fields = Vec::with_capacity(names.len());
        let mut columns = Vec::with_capacity(names.len());
        for name in names {
            let name = name.as_ref();
            let i = self
                .index_of(name)
                .ok_or_else(|| Error::InvalidInput(format!("the batch has no column `{name}`")))?;
            fields.push(self.schema.fields[i].clone());
            columns.push(self.columns[i].clone());
        }
        Ok(RecordBatch {
            schema: Schema { fields },
            num_rows: self.num_rows,
            columns,
        })
    }

    /// Removes the named columns; names that are absent are ignored.
    pub fn drop_columns(mut self, names: &[impl AsRef<str>]) -> RecordBatch {
        let drop = |name: &str| names.iter().any(|n| n.as_ref() == name);
        let keep: Vec<bool> = self.schema.fields.iter().map(|f| !drop(&f.name)).collect();
        let mut keep_iter = keep.iter();
        self.schema
            .fields
            .retain(|_| *keep_iter.next().expect("one flag per field"));
        let mut keep_iter = keep.iter();
        self.columns
            .retain(|_| *keep_iter.next().expect("one flag per column"));
        self
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// 3 rows × (`id` int64, `name` utf8 with a null).
    pub(crate) fn sample() -> RecordBatch {
        RecordBatch::try_new(
            vec![
                Field {
                    name: "id".into(),
                    data_type: DataType::Int64,
                    nullable: false,
                },
                Field {
                    name: "name".into(),
                    data_type: DataType::Utf8,
                    nullable: true,
                },
            ],
            vec![
                Column::from_int64([Some(1), Some(2), Some(3)]),
                Column::from_utf8([Some("a"), None, Some("c")]),
            ],
            3,
        )
        .unwrap()
    }

    #[test]
    fn filter_keeps_marked_rows() {
        let out = sample().filter(&[true, false, true]);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out.int64("id").unwrap().iter().collect::<Vec<_>>(),
            vec![Some(1), Some(3)]
        );
    }

    #[test]
    fn missing_and_mistyped_columns_are_named() {
        let batch = sample();
        assert_eq!(
            batch.int64("nope").unwrap_err(),
            Error::InvalidInput("the batch has no column `nope`".into())
        );
        assert_eq!(
            batch.int64("name").unwrap_err(),
            Error::InvalidInput("column `name` is utf8, expected int64".into())
        );
    }

    #[test]
    fn rename_select_and_drop() {
        let batch = sample().rename_column("name", "label").unwrap();
        assert!(batch.utf8("label").is_ok());
        let only = batch.select(&["label"]).unwrap();
        assert_eq!(only.schema.fields.len(), 1);
        let dropped = batch.drop_columns(&["id"]);
        assert_eq!(dropped.schema.fields[0].name, "label");
        assert_eq!(dropped.columns.len(), 1);
    }

    #[test]
    fn mismatched_type_is_rejected() {
        let err = RecordBatch::try_new(
            vec![Field {
                name: "x".into(),
                data_type: DataType::Float64,
                nullable: false,
            }],
            vec![Column::from_int64([Some(1)])],
            1,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Internal(m) if m.contains("declared float64")));
    }
}
