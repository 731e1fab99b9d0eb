// A weir transform in C, on contract weir:plugin@0.2.0: adds
// `distance_km` (float64, nullable), the flight's `distance` (int64 or
// float64, statute miles) in kilometres (1 mile = 1.609344 km exactly, by
// the 1959 international yard and pound agreement). A null distance gives
// a null; a missing or non-numeric `distance` column is an `invalid-input`
// error naming it.
//
// `describe` declares that the stage reads only `distance`, so only that
// column crosses into the plugin; the transform answers with a `splice`
// holding only the new column, and the host keeps every other column as it
// was (a column already named `distance_km` is replaced).
//
// The types and the export signatures come from `transformer.h`, which
// `build.sh` generates from weir's WIT with `wit-bindgen c`. Ownership
// follows wit-bindgen's C conventions: the input batch belongs to this
// function (it frees it), and whatever it returns is freed by the
// generated glue after the host has copied it.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transformer.h"

#define SOURCE_COLUMN "distance"
#define OUTPUT_COLUMN "distance_km"
#define KM_PER_MILE 1.609344

typedef weir_plugin_types_record_batch_t batch_t;
typedef weir_plugin_types_column_t column_t;
typedef weir_plugin_types_error_t error_t_;
typedef exports_weir_plugin_transform_output_t output_t;
typedef weir_plugin_stage_new_column_t new_column_t;

static bool fail(error_t_ *err, uint8_t tag, const char *message) {
  err->tag = tag;
  transformer_string_dup(&err->val.invalid_input, message);
  return false;
}

// Index of the field named `name`, or -1.
static long field_index(const batch_t *batch, const char *name) {
  size_t len = strlen(name);
  for (size_t i = 0; i < batch->schema.fields.len; i++) {
    const transformer_string_t *field = &batch->schema.fields.ptr[i].name;
    if (field->len == len && memcmp(field->ptr, name, len) == 0) {
      return (long)i;
    }
  }
  return -1;
}

static bool is_valid(const column_t *column, size_t row) {
  return !column->validity.is_some ||
         (column->validity.val.ptr[row / 8] >> (row % 8)) & 1;
}

void exports_weir_plugin_transform_describe(
    exports_weir_plugin_transform_stage_info_t *ret) {
  ret->reads.is_some = true;
  ret->reads.val.len = 1;
  ret->reads.val.ptr = malloc(sizeof(transformer_string_t));
  transformer_string_dup(&ret->reads.val.ptr[0], SOURCE_COLUMN);
}

bool exports_weir_plugin_transform_transform(batch_t *batch, output_t *ret,
                                             error_t_ *err) {
  uint32_t rows = batch->num_rows;
  char message[160];
  long source = field_index(batch, SOURCE_COLUMN);
  if (source < 0) {
    weir_plugin_types_record_batch_free(batch);
    return fail(err, WEIR_PLUGIN_TYPES_ERROR_INVALID_INPUT,
                "no column `" SOURCE_COLUMN "`");
  }
  const column_t *input = &batch->columns.ptr[source];
  uint8_t tag = input->values.tag;
  if (tag != WEIR_PLUGIN_TYPES_COLUMN_VALUES_INT64 &&
      tag != WEIR_PLUGIN_TYPES_COLUMN_VALUES_FLOAT64) {
    snprintf(message, sizeof message,
             "column `" SOURCE_COLUMN "` must be int64 or float64 (value case %u)",
             (unsigned)tag);
    weir_plugin_types_record_batch_free(batch);
    return fail(err, WEIR_PLUGIN_TYPES_ERROR_INVALID_INPUT, message);
  }

  // The new column: values, and a validity bitmap copied from the input's.
  double *km = malloc(sizeof(double) * (rows ? rows : 1));
  size_t bitmap_len = (rows + 7) / 8;
  uint8_t *validity = NULL;
  bool any_null = false;
  for (uint32_t row = 0; row < rows; row++) {
    if (!is_valid(input, row)) {
      any_null = true;
      km[row] = 0.0;
      continue;
    }
    double miles = tag == WEIR_PLUGIN_TYPES_COLUMN_VALUES_INT64
                       ? (double)input->values.val.int64.ptr[row]
                       : input->values.val.float64.ptr[row];
    km[row] = miles * KM_PER_MILE;
  }
  if (any_null) {
    validity = malloc(bitmap_len);
    memcpy(validity, input->validity.val.ptr, bitmap_len);
  }
  weir_plugin_types_record_batch_free(batch);

  // The answer: every input row, plus this one column.
  new_column_t *added = malloc(sizeof(new_column_t));
  transformer_string_dup(&added->field.name, OUTPUT_COLUMN);
  added->field.data_type.tag = WEIR_PLUGIN_TYPES_DATA_TYPE_FLOAT64;
  added->field.nullable = true;
  added->column.values.tag = WEIR_PLUGIN_TYPES_COLUMN_VALUES_FLOAT64;
  added->column.values.val.float64.ptr = km;
  added->column.values.val.float64.len = rows;
  added->column.validity.is_some = any_null;
  if (any_null) {
    added->column.validity.val.ptr = validity;
    added->column.validity.val.len = bitmap_len;
  }
  ret->tag = EXPORTS_WEIR_PLUGIN_TRANSFORM_OUTPUT_SPLICE;
  ret->val.splice.selection.is_some = false;
  ret->val.splice.columns.ptr = added;
  ret->val.splice.columns.len = 1;
  ret->val.splice.drop.ptr = NULL;
  ret->val.splice.drop.len = 0;
  return true;
}
