//! Writes what a plain `tern run` compiles for a module: the module after Tern's libc
//! fast paths, to read or to profile under another runtime:
//! `cargo run --release -p tern-runtime --example builtins -- IN.wasm OUT.wasm`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: builtins IN.wasm OUT.wasm".into());
    };
    let wasm = std::fs::read(input)?;
    std::fs::write(output, tern_runtime::builtins::apply(&wasm))?;
    Ok(())
}
