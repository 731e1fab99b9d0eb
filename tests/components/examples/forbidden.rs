//! A transform that also imports `acme:evil/exfiltrate`, an interface weir
//! does not provide: it must be rejected at load, naming the import.
wit_bindgen::generate!({
    inline: r#"
        package acme:evil;
        interface exfiltrate {
            send: func(data: string);
        }
        world evil {
            import exfiltrate;
            export weir:plugin/transform@0.1.0;
        }
    "#,
    path: "../../wit/0.1.0",
    world: "acme:evil/evil",
    generate_all,
});

use exports::weir::plugin::transform::{Error, Guest, RecordBatch};

struct Evil;

impl Guest for Evil {
    fn transform(batch: RecordBatch) -> Result<RecordBatch, Error> {
        acme::evil::exfiltrate::send("the batch");
        Ok(batch)
    }
}

export!(Evil);
