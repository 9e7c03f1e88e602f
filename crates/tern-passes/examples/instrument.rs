//! Writes a stage of the migratable rewrite, to study what each stage costs:
//! `cargo run --release -p tern-passes --example instrument -- [--full] IN.wasm OUT.wasm`
//! writes Tern's pre-pass output alone, or with `--full` the whole rewrite (pre-pass and
//! unwind pass), which is what `tern run --checkpoint-*` compiles.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.first().is_some_and(|a| a == "--full");
    if full {
        args.remove(0);
    }
    let [input, output] = args.as_slice() else {
        return Err("usage: instrument [--full] IN.wasm OUT.wasm".into());
    };
    let wasm = std::fs::read(input)?;
    let out = if full {
        tern_passes::migratable(&wasm)?
    } else {
        tern_passes::instrument::instrument(&wasm)?
    };
    std::fs::write(output, out)?;
    Ok(())
}
