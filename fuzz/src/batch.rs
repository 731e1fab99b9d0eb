//! The `plugin-batch` target's inputs: bytes read as a recipe for the
//! record batch a (hostile) plugin could return across the WIT boundary.

use weir::bindings::types;

/// Reads bytes front to back; zeros once they run out.
struct Recipe<'a>(&'a [u8]);

impl Recipe<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A small length, sometimes far off.
    fn len(&mut self) -> usize {
        match self.byte() {
            255 => self.u32() as usize % (1 << 20),
            b => usize::from(b % 40),
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

/// The batch `bytes` describe: a row count, then per column a name, a
/// declared type, nullability, an optional validity bitmap and values of
/// a (possibly different) type and (possibly wrong) length.
pub fn from_recipe(bytes: &[u8]) -> types::RecordBatch {
    let mut recipe = Recipe(bytes);
    let num_rows = match recipe.byte() {
        255 => recipe.u32(),
        b => u32::from(b % 20),
    };
    let columns = usize::from(recipe.byte() % 5);
    let mut fields = Vec::new();
    let mut values = Vec::new();
    for _ in 0..columns {
        let name = format!("c{}", recipe.byte() % 4);
        let declared = data_type(recipe.byte());
        let nullable = recipe.byte() % 2 == 0;
        let validity = match recipe.byte() % 3 {
            0 => None,
            _ => {
                let len = recipe.len();
                Some(recipe.bytes(len))
            }
        };
        let carried = if recipe.byte() % 8 == 0 {
            data_type(recipe.byte())
        } else {
            declared.clone()
        };
        let len = recipe.len();
        let column_values = match carried {
            types::DataType::Boolean => types::ColumnValues::Boolean(recipe.bytes(len)),
            types::DataType::Int64 => {
                types::ColumnValues::Int64((0..len).map(|_| i64::from(recipe.u32())).collect())
            }
            types::DataType::Float64 => {
                types::ColumnValues::Float64((0..len).map(|_| f64::from(recipe.u32())).collect())
            }
            types::DataType::Date32 => {
                types::ColumnValues::Date32((0..len).map(|_| recipe.u32() as i32).collect())
            }
            types::DataType::Timestamp(_) => {
                types::ColumnValues::Timestamp((0..len).map(|_| i64::from(recipe.u32())).collect())
            }
            types::DataType::Utf8 | types::DataType::Binary => {
                let offsets: Vec<i32> = (0..len).map(|_| i32::from(recipe.byte()) - 8).collect();
                let data_len = recipe.len();
                let var = types::VarLen {
                    offsets,
                    data: recipe.bytes(data_len),
                };
                if matches!(carried, types::DataType::Utf8) {
                    types::ColumnValues::Utf8(var)
                } else {
                    types::ColumnValues::Binary(var)
                }
            }
        };
        fields.push(types::Field {
            name,
            data_type: declared,
            nullable,
        });
        values.push(types::Column {
            validity,
            values: column_values,
        });
    }
    if recipe.byte() % 16 == 0 {
        values.pop();
    }
    types::RecordBatch {
        schema: types::Schema { fields },
        num_rows,
        columns: values,
    }
}

fn data_type(byte: u8) -> types::DataType {
    match byte % 7 {
        0 => types::DataType::Boolean,
        1 => types::DataType::Int64,
        2 => types::DataType::Float64,
        3 => types::DataType::Utf8,
        4 => types::DataType::Binary,
        5 => types::DataType::Date32,
        _ => types::DataType::Timestamp(None),
    }
}

/// Recipes of well-formed batches of each type, and a few classic faults.
pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        // 2 rows, 1 int64 column, 2 values.
        vec![2, 1, 0, 1, 0, 0, 1, 2, 1, 0, 0, 0, 2, 0, 0, 0],
        // 3 rows, a utf8 column with offsets 0..3 (as bytes 8, 9, 10, 11).
        vec![3, 1, 1, 3, 1, 0, 1, 4, 8, 9, 10, 11, 3, b'a', b'b', b'c', 1],
        // Zero columns claiming many rows.
        vec![255, 255, 255, 255, 255, 0],
        // A boolean column with a short bitmap and a validity bitmap.
        vec![17, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1],
    ]
}
