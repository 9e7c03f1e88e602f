//! Helpers shared by the passes' unit tests.

use wasmparser::Operator;

/// Calls `f` with the operators of the only function of the module `text` (WAT) and
/// the number of locals it declares.
pub(crate) fn with_only_function<R>(text: &str, f: impl FnOnce(&[Operator<'_>], u32) -> R) -> R {
    let wasm = wat::parse_str(text).expect("valid wat");
    for payload in wasmparser::Parser::new(0).parse_all(&wasm) {
        if let wasmparser::Payload::CodeSectionEntry(body) = payload.expect("parses") {
            let mut declared = 0;
            for l in body.get_locals_reader().expect("locals") {
                declared += l.expect("local").0;
            }
            let ops: Vec<_> = body
                .get_operators_reader()
                .expect("ops")
                .into_iter()
                .collect::<Result<_, _>>()
                .expect("reads");
            return f(&ops, declared);
        }
    }
    panic!("no function")
}
