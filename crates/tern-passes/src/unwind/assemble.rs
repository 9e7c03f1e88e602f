//! Putting the module back together: the rewritten bodies and their resume clones, the
//! unwind state globals, the memory of unwind records and Asyncify's five exports.

use super::*;

/// Re-encodes the module with the rewritten bodies, the pass's three globals (state,
/// data address, site a rewind is headed for), its memory and its six exports.
pub(super) fn assemble(
    wasm: &[u8],
    m: &CallGraph,
    g: Globals,
    bodies: HashMap<u32, Vec<u8>>,
    clones: Vec<(u32, Vec<u8>)>,
) -> Result<Vec<u8>, PassError> {
    let mut a = Assembler {
        bodies,
        n_types: m.types.len() as u32,
        n_funcs: (m.func_types.len() + clones.len()) as u32,
        clones,
        g,
        globals_written: m.has_globals,
        memory: m.memories,
        memory_written: m.has_memories,
        next_body: 0,
    };
    let mut module = Module::new();
    a.parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| defect(format!("cannot re-encode: {e}")))?;
    let out = module.finish();
    Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .map_err(|e| {
            defect(format!(
                "the unwindable module is invalid (a Tern bug): {e}"
            ))
        })?;
    Ok(out)
}

pub(super) struct Assembler {
    bodies: HashMap<u32, Vec<u8>>,
    n_types: u32,
    /// Functions before the five exports: the module's and the resume clones.
    n_funcs: u32,
    /// Type index and body of each resume clone.
    clones: Vec<(u32, Vec<u8>)>,
    g: Globals,
    globals_written: bool,
    /// Index of the pass's memory, and whether it is in a memory section yet.
    memory: u32,
    memory_written: bool,
    next_body: u32,
}

impl Assembler {
    /// Types of the five exports: `[i32] -> []`, `[] -> []`, `[] -> [i32]`.
    pub(super) fn export_types(&self) -> [u32; 5] {
        let (set, none, get) = (self.n_types, self.n_types + 1, self.n_types + 2);
        [set, none, set, none, get]
    }

    pub(super) fn globals(&mut self, section: &mut GlobalSection) {
        // State, data address, and the site a rewind is headed for.
        for _ in 0..3 {
            section.global(
                GlobalType {
                    val_type: ValType::I32,
                    mutable: true,
                    shared: false,
                },
                &ConstExpr::i32_const(0),
            );
        }
        self.globals_written = true;
    }

    fn memory(&mut self, section: &mut MemorySection) {
        section.memory(MemoryType {
            minimum: 0,
            maximum: Some(u64::from(UNWIND_MEMORY_PAGES)),
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        self.memory_written = true;
    }

    pub(super) fn export_body(&self, k: usize) -> Function {
        let mut f = Function::new(vec![]);
        let state = match k {
            0 => Some(UNWINDING),
            2 => Some(REWINDING),
            1 | 3 => Some(NORMAL),
            _ => None,
        };
        if k == 0 || k == 2 {
            f.instruction(&Instruction::LocalGet(0));
            f.instruction(&Instruction::GlobalSet(self.g.data));
        }
        match state {
            Some(s) => {
                f.instruction(&Instruction::I32Const(s));
                f.instruction(&Instruction::GlobalSet(self.g.state));
            }
            None => {
                f.instruction(&Instruction::GlobalGet(self.g.state));
            }
        }
        f.instruction(&Instruction::End);
        f
    }
}

impl Reencode for Assembler {
    type Error = std::convert::Infallible;

    fn parse_custom_section(
        &mut self,
        module: &mut Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        // No index changes here: custom sections (names included) are copied as they are.
        module.section(&wasm_encoder::CustomSection {
            name: section.name().into(),
            data: section.data().into(),
        });
        Ok(())
    }

    fn parse_type_section(
        &mut self,
        types: &mut TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        wasm_encoder::reencode::utils::parse_type_section(self, types, section)?;
        types.ty().function([ValType::I32], []);
        types.ty().function([], []);
        types.ty().function([], [ValType::I32]);
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        wasm_encoder::reencode::utils::parse_function_section(self, functions, section)?;
        for (ty, _) in &self.clones {
            functions.function(*ty);
        }
        for ty in self.export_types() {
            functions.function(ty);
        }
        Ok(())
    }

    fn parse_memory_section(
        &mut self,
        memories: &mut MemorySection,
        section: wasmparser::MemorySectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        wasm_encoder::reencode::utils::parse_memory_section(self, memories, section)?;
        self.memory(memories);
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        wasm_encoder::reencode::utils::parse_global_section(self, globals, section)?;
        self.globals(globals);
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        // A module without memories (or with an imported one) gets a memory section
        // before the first section that follows it.
        let after_memories = matches!(before, Some(SectionId::Tag | SectionId::Global));
        // A module without globals gets its section before the first section that
        // follows globals.
        let after_globals = matches!(
            before,
            Some(
                SectionId::Export
                    | SectionId::Start
                    | SectionId::Element
                    | SectionId::DataCount
                    | SectionId::Code
                    | SectionId::Data
            ) | None
        );
        if !self.memory_written && (after_memories || after_globals) {
            let mut memories = MemorySection::new();
            self.memory(&mut memories);
            module.section(&memories);
        }
        if !self.globals_written && after_globals {
            let mut globals = GlobalSection::new();
            self.globals(&mut globals);
            module.section(&globals);
        }
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        wasm_encoder::reencode::utils::parse_export_section(self, exports, section)?;
        for (k, name) in EXPORTS.iter().enumerate() {
            exports.export(name, ExportKind::Func, self.n_funcs + k as u32);
        }
        exports.export(UNWIND_MEMORY, ExportKind::Memory, self.memory);
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        wasm_encoder::reencode::utils::parse_code_section(self, code, section)?;
        for (_, body) in &self.clones {
            code.raw(body);
        }
        for k in 0..EXPORTS.len() {
            code.function(&self.export_body(k));
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
        let index = self.next_body;
        self.next_body += 1;
        match self.bodies.get(&index) {
            Some(bytes) => {
                code.raw(bytes);
            }
            None => wasm_encoder::reencode::utils::parse_function_body(self, code, func)?,
        }
        Ok(())
    }
}
