//! Writes what a plain `tern run` compiles for a module: the module after Tern's libc
//! fast paths and loop vectoriser, to read or to profile under another runtime:
//! `cargo run --release -p tern-passes --example prepare -- IN.wasm OUT.wasm`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: prepare IN.wasm OUT.wasm".into());
    };
    let wasm = std::fs::read(input)?;
    let wasm = tern_passes::builtins::apply(&wasm);
    std::fs::write(output, tern_passes::vectorize::apply(&wasm))?;
    Ok(())
}
