//! Writes the output of Tern's pre-pass alone (before Asyncify), to study what each stage
//! of the migratable rewrite costs: `cargo run -p tern-snapshot --example instrument --
//! IN.wasm OUT.wasm`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: instrument IN.wasm OUT.wasm".into());
    };
    let wasm = std::fs::read(input)?;
    std::fs::write(output, tern_snapshot::instrument::instrument(&wasm)?)?;
    Ok(())
}
