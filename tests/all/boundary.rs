//! Every data type, with nulls, empty batches and non-ASCII text, crosses the
//! plugin boundary and comes back unchanged.

use arrow::array::{Int64Array, RecordBatch, StringArray};
use weir::columnar::{from_wit, to_wit};
use weir::lent::Lendable;
use weir::plugin::{Limits, Plugin, PluginKind};

fn identity() -> Plugin {
    let bytes = std::fs::read(weir_tests::IDENTITY).unwrap();
    Plugin::from_bytes("identity", &bytes, Some(PluginKind::Transform)).unwrap()
}

fn through_plugin(plugin: &Plugin, batch: &RecordBatch) -> RecordBatch {
    let mut instance = plugin
        .instantiate("roundtrip", "{}".into(), Limits::default())
        .unwrap();
    let (out, _) = instance.transform(&to_wit(batch).unwrap()).unwrap();
    let owned = weir::splice::apply(batch, out).unwrap().batch;
    // The stages' way: the columns lent from their Arrow buffers.
    let lent = Lendable::new(batch).unwrap();
    let (out, _) = instance.transform_with(batch, &lent.lend()).unwrap();
    let lent_out = weir::splice::apply(batch, out).unwrap().batch;
    assert_eq!(
        lent_out, owned,
        "a lent batch arrives as the owned one does"
    );
    owned
}

#[test]
fn every_type_with_nulls_round_trips() {
    let plugin = identity();
    let batch = weir_tests::every_type(1000);
    assert_eq!(through_plugin(&plugin, &batch), batch);
}

#[test]
fn empty_batch_round_trips() {
    let plugin = identity();
    let batch = weir_tests::every_type(0);
    let out = through_plugin(&plugin, &batch);
    assert_eq!(out.num_rows(), 0);
    assert_eq!(out.schema(), batch.schema());
}

#[test]
fn sliced_batch_round_trips_as_its_slice() {
    let plugin = identity();
    let batch = weir_tests::every_type(100).slice(13, 50);
    assert_eq!(through_plugin(&plugin, &batch), batch);
}

#[test]
fn a_slice_at_any_bit_offset_is_lent_as_its_rows() {
    // Slices that start inside a byte (bitmaps made anew), at a byte
    // (bitmaps borrowed), with string offsets that do not start at 0, and
    // ranges without a null (no validity sent).
    let plugin = identity();
    let batch = weir_tests::every_type(80);
    for offset in 0..17 {
        for len in [0, 1, 2, 3, 9, 31] {
            let slice = batch.slice(offset, len);
            assert_eq!(
                through_plugin(&plugin, &slice),
                slice,
                "rows {offset}..+{len}"
            );
        }
    }
    let lent = Lendable::new(&batch.slice(5, 9)).unwrap();
    assert_eq!(
        lent.lend().payload_bytes(),
        weir::columnar::payload_bytes(&to_wit(&batch.slice(5, 9)).unwrap()),
        "a lent batch counts the bytes an owned one does"
    );
}

#[test]
fn one_instance_serves_many_calls() {
    let plugin = identity();
    let mut instance = plugin
        .instantiate("roundtrip", "{}".into(), Limits::default())
        .unwrap();
    for rows in [1, 7, 4096] {
        let batch = weir_tests::every_type(rows);
        let (out, stats) = instance.transform(&to_wit(&batch).unwrap()).unwrap();
        assert_eq!(weir::splice::apply(&batch, out).unwrap().batch, batch);
        assert!(stats.fuel > 0, "fuel is metered");
    }
}

#[test]
fn extract_plugin_parses_bytes_into_batches() {
    let bytes = std::fs::read(weir_tests::KV_EXTRACT).unwrap();
    let plugin = Plugin::from_bytes("kv", &bytes, Some(PluginKind::Extract)).unwrap();
    let mut instance = plugin
        .instantiate("extract", "{}".into(), Limits::default())
        .unwrap();
    let metadata = weir::plugin::SourceMetadata {
        source_name: "settings.txt".into(),
        content_type: "text/plain".into(),
    };
    let (batches, _) = instance
        .extract("a = 1\nb=x\n\nzürich=3\n".as_bytes(), &metadata)
        .unwrap();
    let batch = from_wit(batches.into_iter().next().unwrap()).unwrap();
    let keys = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let values = batch
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(
        keys.iter().collect::<Vec<_>>(),
        vec![Some("a"), Some("b"), Some("zürich")]
    );
    assert_eq!(
        values.iter().collect::<Vec<_>>(),
        vec![Some(1), None, Some(3)]
    );

    let err = instance.extract(b"no equals sign", &metadata).unwrap_err();
    assert_eq!(err.kind(), "plugin_error");
    assert!(
        err.to_string().contains("settings.txt line 1: no `=`"),
        "{err}"
    );
}
