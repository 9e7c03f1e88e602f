//! What Tern's passes over a module (`builtins`, `vectorize`) read of it before they
//! rewrite it: function signatures, the memory, function bodies and names.

use std::ops::Range;

use wasmparser::{KnownCustom, Name, Parser, Payload, TypeRef, ValType};

/// The parts of a core module the passes look at.
pub(crate) struct ModuleOutline {
    /// Every type's parameters and results; `None` for a type that is not a function's.
    pub types: Vec<Option<(Vec<ValType>, Vec<ValType>)>>,
    pub imported_funcs: u32,
    /// The type index of every function, imported ones first.
    pub func_types: Vec<u32>,
    /// Each defined function's body, as a byte range of the module.
    pub bodies: Vec<Range<usize>>,
    /// Function names from the name section, by function index.
    pub names: Vec<(u32, String)>,
}

impl ModuleOutline {
    /// The parameter types of function `func`.
    pub fn params(&self, func: u32) -> Option<&[ValType]> {
        let ty = *self.func_types.get(func as usize)?;
        Some(self.types.get(ty as usize)?.as_ref()?.0.as_slice())
    }
}

/// Reads `wasm`, or returns `None` when it is not a core module that parses, when it has
/// other than one 32-bit unshared memory, or when it has a custom section named `mark`
/// (a pass's own mark: the pass already ran).
pub(crate) fn outline(wasm: &[u8], mark: &str) -> Option<ModuleOutline> {
    let mut outline = ModuleOutline {
        types: Vec::new(),
        imported_funcs: 0,
        func_types: Vec::new(),
        bodies: Vec::new(),
        names: Vec::new(),
    };
    let mut memories = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Module => {
                return None;
            }
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group.ok()?.into_types() {
                        outline.types.push(match &sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => {
                                Some((f.params().to_vec(), f.results().to_vec()))
                            }
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import.ok()?.ty {
                        TypeRef::Func(ty) => {
                            outline.imported_funcs += 1;
                            outline.func_types.push(ty);
                        }
                        TypeRef::Memory(m) => memories.push(m),
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    outline.func_types.push(ty.ok()?);
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    memories.push(m.ok()?);
                }
            }
            Payload::CodeSectionEntry(body) => {
                let r = body.range();
                outline
                    .bodies
                    .push(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?);
            }
            Payload::CustomSection(c) if c.name() == mark => return None,
            Payload::CustomSection(c) => {
                if let KnownCustom::Name(reader) = c.as_known() {
                    for sub in reader {
                        if let Name::Function(map) = sub.ok()? {
                            for naming in map {
                                let naming = naming.ok()?;
                                outline.names.push((naming.index, naming.name.to_owned()));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let [memory] = memories.as_slice() else {
        return None;
    };
    (!memory.memory64 && !memory.shared).then_some(outline)
}
