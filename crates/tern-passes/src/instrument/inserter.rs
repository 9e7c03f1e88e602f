//! [`SafepointInserter`]: the re-encoder that writes the pre-pass's module — the new
//! imports and wrappers, the exports, and every function body with its loop polls and
//! out-of-line safe points.

use super::*;

/// The order of non-custom sections in a module.
pub(super) const SECTION_ORDER: [SectionId; 13] = [
    SectionId::Type,
    SectionId::Import,
    SectionId::Function,
    SectionId::Table,
    SectionId::Memory,
    SectionId::Tag,
    SectionId::Global,
    SectionId::Export,
    SectionId::Start,
    SectionId::Element,
    SectionId::DataCount,
    SectionId::Code,
    SectionId::Data,
];

/// An import the rewrite adds.
pub(super) struct NewImport {
    module: &'static str,
    name: String,
    ty: u32,
}

pub(super) struct SafepointInserter {
    s: Survey,
    /// Types appended to the type section, in order.
    new_types: Vec<(Vec<ValType>, Vec<ValType>)>,
    new_imports: Vec<NewImport>,
    /// Type index of `[] -> []`.
    void_ty: u32,
    /// For each WASI function a restore needs: the function index to call.
    restore_targets: Vec<(&'static str, u32, u32)>,
    /// For each noted WASI function the guest imports: its note import's index.
    notes: Vec<(String, u32)>,
    /// Index of the `tern.sleep` import, when the guest imports `poll_oneoff`.
    sleep: Option<u32>,
    /// Sections written so far (by id), to add the missing ones.
    emitted: HashSet<u8>,
    /// Index among defined functions of the next body to rewrite.
    next_func: usize,
}

impl SafepointInserter {
    pub(super) fn new(s: Survey) -> SafepointInserter {
        let mut r = SafepointInserter {
            new_types: Vec::new(),
            new_imports: Vec::new(),
            void_ty: 0,
            restore_targets: Vec::new(),
            notes: Vec::new(),
            sleep: None,
            emitted: HashSet::new(),
            next_func: 0,
            s,
        };
        r.void_ty = r.add_type(vec![], vec![]);
        r.add_import("tern", SAFEPOINT.1, r.void_ty);
        let wasi_imports: Vec<(String, u32)> =
            r.s.func_imports
                .iter()
                .enumerate()
                .filter(|(_, (m, _, _))| m == WASI)
                .map(|(i, (_, n, _))| (n.clone(), i as u32))
                .collect();
        for name in NOTED {
            if let Some((_, i)) = wasi_imports.iter().find(|(n, _)| n == name) {
                let ty = r.s.func_types[r.s.func_imports[*i as usize].2 as usize].clone();
                let Some((mut params, results)) = ty else {
                    continue;
                };
                params.extend(results);
                let note_ty = r.add_type(params, vec![]);
                let idx = r.add_import("tern", &format!("note_{name}"), note_ty);
                r.notes.push((name.to_owned(), idx));
            }
        }
        if wasi_imports.iter().any(|(n, _)| n == "poll_oneoff") {
            let ty = r.add_type(vec![ValType::I32, ValType::I32], vec![ValType::I32]);
            r.sleep = Some(r.add_import("tern", SLEEP, ty));
        }
        for name in RESTORE_CALLS {
            let (params, results) = wasi_signature(name);
            let ty = r.add_type(params, results);
            let target = match wasi_imports.iter().find(|(n, _)| n == name) {
                Some((_, i)) => *i,
                None => r.add_import(WASI, name, ty),
            };
            r.restore_targets.push((name, target, ty));
        }
        r
    }

    pub(super) fn add_type(&mut self, params: Vec<ValType>, results: Vec<ValType>) -> u32 {
        self.new_types.push((params, results));
        (self.s.func_types.len() + self.new_types.len() - 1) as u32
    }

    /// Adds an import and returns its function index.
    pub(super) fn add_import(&mut self, module: &'static str, name: &str, ty: u32) -> u32 {
        self.new_imports.push(NewImport {
            module,
            name: name.to_owned(),
            ty,
        });
        (self.s.func_imports.len() + self.new_imports.len() - 1) as u32
    }

    pub(super) fn n_imports(&self) -> u32 {
        (self.s.func_imports.len() + self.new_imports.len()) as u32
    }

    pub(super) fn safepoint(&self) -> u32 {
        self.s.func_imports.len() as u32
    }

    pub(super) fn wrapper(&self, import: u32) -> u32 {
        self.n_imports() + self.s.defined_funcs + import
    }

    pub(super) fn trampoline(&self, i: usize) -> u32 {
        self.wrapper(self.s.func_imports.len() as u32) + i as u32
    }

    pub(super) fn emit_imports(&mut self, section: &mut ImportSection) {
        for imp in &self.new_imports {
            section.import(
                imp.module,
                &imp.name,
                wasm_encoder::EntityType::Function(imp.ty),
            );
        }
        self.emitted.insert(SectionId::Import as u8);
    }

    pub(super) fn append_types(&mut self, types: &mut TypeSection) {
        for (params, results) in &self.new_types {
            types
                .ty()
                .function(params.iter().copied(), results.iter().copied());
        }
        self.emitted.insert(SectionId::Type as u8);
    }

    pub(super) fn append_functions(&mut self, functions: &mut FunctionSection) {
        for (_, _, ty) in &self.s.func_imports {
            functions.function(*ty);
        }
        for (_, _, ty) in &self.restore_targets {
            functions.function(*ty);
        }
        self.emitted.insert(SectionId::Function as u8);
    }

    pub(super) fn append_exports(&mut self, exports: &mut ExportSection) {
        for g in &self.s.mutable_globals {
            exports.export(
                &format!("{GLOBAL_EXPORT_PREFIX}{g}"),
                ExportKind::Global,
                *g,
            );
        }
        for (i, (name, _, _)) in self.restore_targets.iter().enumerate() {
            exports.export(
                &format!("tern:{name}"),
                ExportKind::Func,
                self.trampoline(i),
            );
        }
        self.emitted.insert(SectionId::Export as u8);
    }

    pub(super) fn append_code(&mut self, code: &mut CodeSection) {
        for i in 0..self.s.func_imports.len() as u32 {
            code.function(&self.wrapper_body(i));
        }
        for (_, target, ty) in &self.restore_targets {
            code.function(&self.trampoline_body(*target, *ty));
        }
        self.emitted.insert(SectionId::Code as u8);
    }

    /// The types of the parameters and locals of defined function `index`, whose body is
    /// `func`.
    pub(super) fn local_types(
        &self,
        index: usize,
        func: &wasmparser::FunctionBody<'_>,
    ) -> Option<Vec<ValType>> {
        let ty = *self.s.defined_func_types.get(index)?;
        let (params, _) = self.s.func_types.get(ty as usize)?.as_ref()?;
        let mut types = params.clone();
        for local in func.get_locals_reader().ok()? {
            let (count, ty) = local.ok()?;
            // A function declaring more locals than the spill area could hold anyway
            // is not worth a liveness bitset per block.
            if types.len() + count as usize > 1 << 16 {
                return None;
            }
            types.extend(std::iter::repeat_n(val_type(ty).ok()?, count as usize));
        }
        Some(types)
    }

    /// Pushes the poll flag.
    pub(super) fn flag(&self, f: &mut Function) {
        f.instruction(&Instruction::I32Const(0));
        f.instruction(&Instruction::I32Load8U(MemArg {
            offset: u64::from(POLL_FLAG_ADDR),
            align: 0,
            target: MemArgTarget::Memory(0),
            ordering: None,
        }));
    }

    /// The in-loop poll: `if (flag) call safepoint`.
    pub(super) fn poll(&self, f: &mut Function) {
        self.flag(f);
        f.instruction(&Instruction::If(BlockType::Empty));
        f.instruction(&Instruction::Call(self.safepoint()));
        f.instruction(&Instruction::End);
    }

    /// `wrapper(params) = { safepoint(); r = import(params); note(params, r)?; r }`
    pub(super) fn wrapper_body(&self, import: u32) -> Function {
        let (module, name, ty) = &self.s.func_imports[import as usize];
        let (params, results) = self.s.func_types[*ty as usize].clone().unwrap_or_default();
        let note = (module == WASI)
            .then(|| self.notes.iter().find(|(n, _)| n == name))
            .flatten();
        let result_local = params.len() as u32;
        let locals = match (note, results.as_slice()) {
            (Some(_), [t]) => vec![(1, *t)],
            _ => vec![],
        };
        let mut f = Function::new(locals);
        match self.sleep {
            Some(sleep) if module == WASI && name == "poll_oneoff" => {
                // loop { safepoint(); if sleep(subscriptions, count) continue }: a
                // guest sleeping in poll_oneoff is woken by a checkpoint request and
                // stops at the safe point, its timeouts shortened by the time slept.
                f.instruction(&Instruction::Loop(BlockType::Empty));
                f.instruction(&Instruction::Call(self.safepoint()));
                f.instruction(&Instruction::LocalGet(0));
                f.instruction(&Instruction::LocalGet(2));
                f.instruction(&Instruction::Call(sleep));
                f.instruction(&Instruction::BrIf(0));
                f.instruction(&Instruction::End);
            }
            _ => {
                f.instruction(&Instruction::Call(self.safepoint()));
            }
        }
        for i in 0..params.len() as u32 {
            f.instruction(&Instruction::LocalGet(i));
        }
        f.instruction(&Instruction::Call(import));
        if let (Some((_, note_idx)), [_]) = (note, results.as_slice()) {
            f.instruction(&Instruction::LocalSet(result_local));
            for i in 0..params.len() as u32 {
                f.instruction(&Instruction::LocalGet(i));
            }
            f.instruction(&Instruction::LocalGet(result_local));
            f.instruction(&Instruction::Call(*note_idx));
            f.instruction(&Instruction::LocalGet(result_local));
        }
        f.instruction(&Instruction::End);
        f
    }

    pub(super) fn trampoline_body(&self, target: u32, ty: u32) -> Function {
        let n = self.new_types[ty as usize - self.s.func_types.len()]
            .0
            .len() as u32;
        let mut f = Function::new(vec![]);
        for i in 0..n {
            f.instruction(&Instruction::LocalGet(i));
        }
        f.instruction(&Instruction::Call(target));
        f.instruction(&Instruction::End);
        f
    }
}

impl Reencode for SafepointInserter {
    type Error = Infallible;

    fn parse_custom_name_subsection(
        &mut self,
        names: &mut wasm_encoder::NameSection,
        section: wasmparser::Name<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        // Imports' names go to their wrappers, which come after the defined functions:
        // a name map must be sorted by index, so the remapped ones are sorted again.
        match section {
            wasmparser::Name::Function(map) => {
                let mut sorted = Vec::new();
                for naming in map {
                    let naming = naming?;
                    sorted.push((self.function_index(naming.index)?, naming.name));
                }
                sorted.sort_by_key(|(i, _)| *i);
                let mut out = wasm_encoder::NameMap::new();
                for (i, name) in sorted {
                    out.append(i, name);
                }
                names.functions(&out);
            }
            wasmparser::Name::Label(_) => {
                // Dropped: the blocks put around loops renumber labels.
            }
            wasmparser::Name::Local(map) => {
                let mut sorted = Vec::new();
                for naming in map {
                    let naming = naming?;
                    let inner = reencode::utils::name_map(naming.names, Ok)?;
                    sorted.push((self.function_index(naming.index)?, inner));
                }
                sorted.sort_by_key(|(i, _)| *i);
                let mut out = wasm_encoder::IndirectNameMap::new();
                for (i, inner) in &sorted {
                    out.append(*i, inner);
                }
                names.locals(&out);
            }
            other => reencode::utils::parse_custom_name_subsection(self, names, other)?,
        }
        Ok(())
    }

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Infallible>> {
        let imported = self.s.func_imports.len() as u32;
        Ok(if func < imported {
            self.wrapper(func)
        } else {
            func + self.new_imports.len() as u32
        })
    }

    fn parse_type_section(
        &mut self,
        types: &mut TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_type_section(self, types, section)?;
        self.append_types(types);
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        // Imports are written one by one so the new ones can follow in index order.
        for import in section.into_imports() {
            let import = import?;
            let ty = self.entity_type(import.ty)?;
            imports.import(import.module, import.name, ty);
        }
        self.emit_imports(imports);
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error<Infallible>> {
        // The rewrite adds types, imports, functions, exports and code even to a module
        // without such sections: a missing one is written, with only Tern's additions,
        // where the order of sections puts it.
        let rank = |id: SectionId| SECTION_ORDER.iter().position(|o| *o == id);
        let next = match before {
            None => usize::MAX,
            Some(id) => match rank(id) {
                Some(r) => r,
                None => return Ok(()),
            },
        };
        for id in [
            SectionId::Type,
            SectionId::Import,
            SectionId::Function,
            SectionId::Export,
            SectionId::Code,
        ] {
            if rank(id).is_some_and(|r| r < next) && !self.emitted.contains(&(id as u8)) {
                match id {
                    SectionId::Type => {
                        let mut types = TypeSection::new();
                        self.append_types(&mut types);
                        module.section(&types);
                    }
                    SectionId::Import => {
                        let mut imports = ImportSection::new();
                        self.emit_imports(&mut imports);
                        module.section(&imports);
                    }
                    SectionId::Function => {
                        let mut functions = FunctionSection::new();
                        self.append_functions(&mut functions);
                        module.section(&functions);
                    }
                    SectionId::Export => {
                        let mut exports = ExportSection::new();
                        self.append_exports(&mut exports);
                        module.section(&exports);
                    }
                    _ => {
                        let mut code = CodeSection::new();
                        self.append_code(&mut code);
                        module.section(&code);
                    }
                }
            }
        }
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_function_section(self, functions, section)?;
        self.append_functions(functions);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        self.append_exports(exports);
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        reencode::utils::parse_code_section(self, code, section)?;
        self.append_code(code);
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        let mut f = self.new_function_with_parsed_locals(&func)?;
        let this_func = self.next_func;
        self.next_func += 1;
        let ops = func
            .get_operators_reader()?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        // Functions with GC branch instructions keep the simple in-loop poll: their
        // branch depths are not rewritten below.
        let simple = ops.iter().any(|op| {
            matches!(
                op,
                Operator::BrOnNull { .. }
                    | Operator::BrOnNonNull { .. }
                    | Operator::BrOnCast { .. }
                    | Operator::BrOnCastFail { .. }
            )
        });
        let has_loops = ops.iter().any(|op| matches!(op, Operator::Loop { .. }));
        let spills = if simple || !has_loops || !self.s.data_clear_of_spills {
            None
        } else {
            self.local_types(this_func, &func).and_then(|types| {
                let live = crate::liveness::loop_headers(&ops, types.len() as u32)?;
                Some((types, live))
            })
        };
        let mut loops_seen = 0;
        // One entry per open control frame (the function's own first): whether it is a
        // loop wrapped in the three labels of `out_of_line_poll`.
        let mut frames: Vec<bool> = vec![false];
        // For each open wrapped loop: the locals its safe point spills.
        let mut spilled: Vec<Vec<Spill>> = Vec::new();
        let bounded = crate::bounded::loops(&ops);
        for op in ops {
            match op {
                Operator::Loop { blockty } => {
                    let bt = self.block_type(blockty)?;
                    let live = spills
                        .as_ref()
                        .and_then(|(types, live)| Some((types, live.get(loops_seen)?)));
                    let this_loop = loops_seen;
                    loops_seen += 1;
                    if bounded.contains(&this_loop) {
                        // A short counted loop: its enclosing loop's poll will do.
                        f.instruction(&Instruction::Loop(bt));
                        frames.push(false);
                    } else if !simple && matches!(bt, BlockType::Empty | BlockType::Result(_)) {
                        spilled.push(live.map_or_else(Vec::new, |(t, l)| spill_layout(t, l)));
                        // block $done (bt); loop $reenter; block $poll_exit; loop L (bt)
                        f.instruction(&Instruction::Block(bt));
                        f.instruction(&Instruction::Loop(BlockType::Empty));
                        f.instruction(&Instruction::Block(BlockType::Empty));
                        f.instruction(&Instruction::Loop(bt));
                        self.flag(&mut f);
                        f.instruction(&Instruction::BrIf(1));
                        frames.push(true);
                    } else {
                        f.instruction(&Instruction::Loop(bt));
                        self.poll(&mut f);
                        frames.push(false);
                    }
                }
                Operator::Block { .. } | Operator::If { .. } => {
                    f.instruction(&self.instruction(op)?);
                    frames.push(false);
                }
                Operator::End => {
                    let wrapped = frames.pop().unwrap_or(false);
                    f.instruction(&Instruction::End);
                    if wrapped {
                        // L ended normally: leave with its results. A raised flag lands
                        // after $poll_exit: the safe point, then back to L's header.
                        f.instruction(&Instruction::Br(2));
                        f.instruction(&Instruction::End);
                        let spills = spilled.pop().unwrap_or_default();
                        for s in &spills {
                            f.instruction(&Instruction::I32Const(0));
                            f.instruction(&Instruction::LocalGet(s.local));
                            f.instruction(&s.store());
                        }
                        f.instruction(&Instruction::Call(self.safepoint()));
                        for s in &spills {
                            f.instruction(&Instruction::I32Const(0));
                            f.instruction(&s.load());
                            f.instruction(&Instruction::LocalSet(s.local));
                        }
                        f.instruction(&Instruction::Br(0));
                        f.instruction(&Instruction::End);
                        f.instruction(&Instruction::Unreachable);
                        f.instruction(&Instruction::End);
                    }
                }
                Operator::Br { relative_depth } => {
                    f.instruction(&Instruction::Br(shifted(&frames, relative_depth)));
                }
                Operator::BrIf { relative_depth } => {
                    f.instruction(&Instruction::BrIf(shifted(&frames, relative_depth)));
                }
                Operator::BrTable { targets } => {
                    let mut list = Vec::with_capacity(targets.len() as usize);
                    for t in targets.targets() {
                        list.push(shifted(&frames, t?));
                    }
                    let default = shifted(&frames, targets.default());
                    f.instruction(&Instruction::BrTable(list.into(), default));
                }
                other => {
                    f.instruction(&self.instruction(other)?);
                }
            }
        }
        code.function(&f);
        Ok(())
    }
}
