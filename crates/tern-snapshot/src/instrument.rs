//! Tern's pre-pass of the migratable rewrite: it prepares a module so that the unwind
//! pass ([`crate::unwind`]) can then make every safe point an unwind point.
//!
//! Binaryen has no pass that inserts polls at loop headers, so this one is written here
//! on `wasmparser` and `wasm-encoder`'s reencoder. It:
//!
//! - adds the import `tern.safepoint: [] -> []`, the one import that may unwind the
//!   stack;
//! - puts a poll at every loop header: `br_if $poll_exit (i32.load8_u [POLL_FLAG_ADDR])`.
//!   The host raises that byte from another thread when it wants a checkpoint, so a
//!   guest deep in a loop that never calls the host stops within one iteration. The call
//!   to `tern.safepoint` sits *outside* the loop, out of line:
//!
//!   ```text
//!   block $done (bt)              ;; the loop's own result type
//!     loop $reenter
//!       block $poll_exit
//!         loop $L (bt)            ;; the original loop
//!           br_if $poll_exit (flag)
//!           …original body…
//!         end
//!         br $done                ;; $L ended normally
//!       end
//!       call $tern.safepoint      ;; unwinds here; a rewind resumes here
//!       br $reenter               ;; back to $L's header with the same locals
//!     end
//!     unreachable
//!   end
//!   ```
//!
//!   A loop header holds no state but the function's locals, which the unwind pass saves, so
//!   leaving the loop and re-entering it is the same as staying. With no call inside the
//!   hot loop, Cranelift keeps the loop's values in registers and the unwind pass adds
//!   nothing to it: on PolyBench's gemm this cut the cost of migratable mode from 2.6× to
//!   1.8× (the call in the loop was the cost). Loops that take parameters keep the simple
//!   form, `if (flag) call safepoint` at the header;
//! - around that call, stores the locals live at the loop's header
//!   ([`crate::liveness`]) to a spill area below wasm-ld's `--global-base`
//!   ([`SPILL_START`]..[`SPILL_END`]) and reloads them after it, so that no value is live
//!   across the call: x86-64 has no callee-saved vector registers, and a float carried
//!   around the loop was otherwise kept on the stack inside the loop (before the unwind
//!   pass, this took the pre-pass alone from 1.98× to 1.50× native on eight PolyBench kernels
//!   against 1.39× for the plain module);
//! - leaves out the poll of innermost counted loops of at most [`crate::bounded`]'s
//!   `MAX_TRIPS` iterations: their enclosing loop's poll comes soon enough;
//! - routes every function import through a wrapper that calls `tern.safepoint` first,
//!   so every WASI call is a safe point too (the call itself then runs after a restore);
//! - lets a guest sleeping in `poll_oneoff` (`sleep`, `nanosleep`) be checkpointed at
//!   once: its wrapper first waits in `tern.sleep`, which returns early on a request so
//!   the wrapper can reach its safe point, and shortens the relative timeouts in the
//!   guest's subscriptions by the time slept, so the sleep goes on after a restore;
//! - tells the host about file descriptors the guest opens, closes and renumbers
//!   (`tern.note_*` imports called by the wrappers), so a snapshot can name them;
//! - exports the WASI calls a restore needs to reopen files (`tern:path_open`, …), and
//!   every mutable global (`tern:global:N`), `__stack_pointer` included, which is
//!   neither exported nor saved by the unwind pass.
//!
//! Modules that use Wasm exception handling (setjmp/longjmp, C++ exceptions) are
//! refused: a safe point cannot be unwound through `try` blocks.

use std::collections::HashSet;
use std::convert::Infallible;

use wasm_encoder::reencode::{self, Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, ImportSection,
    Instruction, MemArg, MemArgTarget, Module, SectionId, TypeSection, ValType,
};
use wasmparser::{Operator, Parser, Payload, TypeRef, Validator, WasmFeatures};

use crate::SnapshotError;

/// Address in linear memory of the byte the host raises to ask for a checkpoint. wasm-ld
/// leaves the first 1 KiB of memory unused (data starts at `--global-base`, 1024); the
/// rewrite refuses a module with data there.
pub const POLL_FLAG_ADDR: u32 = 8;

/// The area of linear memory where an out-of-line safe point spills the locals live at
/// its loop's header, below wasm-ld's `--global-base` like the poll flag. Only one frame
/// is ever between its spill and its reload (the safe-point call does not re-enter the
/// guest), so one area serves every loop. A module with data there spills nothing.
pub const SPILL_START: u32 = 16;
/// End (exclusive) of the spill area.
pub const SPILL_END: u32 = 1024;

/// Module and name of the safe-point import.
pub const SAFEPOINT: (&str, &str) = ("tern", "safepoint");

/// Name (in module `tern`) of the import the `poll_oneoff` wrapper calls to sleep until
/// its clock subscriptions are due or a checkpoint is requested.
pub const SLEEP: &str = "sleep";

/// Prefix of the exports that give the host each mutable global.
pub const GLOBAL_EXPORT_PREFIX: &str = "tern:global:";

const WASI: &str = "wasi_snapshot_preview1";

/// WASI functions whose effect the host records: on the descriptor table, and on which
/// files of a volume the guest has changed.
const NOTED: [&str; 5] = [
    "path_open",
    "fd_close",
    "fd_renumber",
    "path_rename",
    "path_unlink_file",
];

/// WASI functions a restore calls (through `tern:NAME` exports) to reopen files.
const RESTORE_CALLS: [&str; 4] = ["path_open", "fd_seek", "fd_renumber", "fd_close"];

fn wasi_signature(name: &str) -> (Vec<ValType>, Vec<ValType>) {
    use ValType::{I32, I64};
    match name {
        "path_open" => (vec![I32, I32, I32, I32, I32, I64, I64, I32, I32], vec![I32]),
        "fd_seek" => (vec![I32, I64, I32, I32], vec![I32]),
        "fd_renumber" => (vec![I32, I32], vec![I32]),
        "fd_close" => (vec![I32], vec![I32]),
        _ => unreachable!("only restore calls are declared here"),
    }
}

/// What the first pass learns of the module.
#[derive(Default)]
struct Scan {
    func_types: Vec<Option<(Vec<ValType>, Vec<ValType>)>>,
    /// Function imports in order: (module, name, type index).
    func_imports: Vec<(String, String, u32)>,
    imported_globals: u32,
    defined_funcs: u32,
    /// Absolute indices of mutable globals defined by the module.
    mutable_globals: Vec<u32>,
    export_names: HashSet<String>,
    /// Type index of each defined function, in order.
    defined_func_types: Vec<u32>,
    /// No active data segment may overlap the spill area (or is placed where the scan
    /// cannot tell), so out-of-line safe points may spill locals there.
    data_clear_of_spills: bool,
}

/// Rewrites `wasm` as described in the module docs; the result is valid Wasm that
/// behaves exactly as the input until the host raises the poll flag.
///
/// # Errors
/// [`SnapshotError::Rewrite`] for an invalid module, one with exception handling, more
/// than one memory or a 64-bit memory, imported mutable globals, or data at the poll
/// flag's address.
pub fn instrument(wasm: &[u8]) -> Result<Vec<u8>, SnapshotError> {
    instrument_with_safepoint(wasm).map(|(out, _)| out)
}

/// [`instrument`], also returning the function index of the `tern.safepoint` import.
pub(crate) fn instrument_with_safepoint(wasm: &[u8]) -> Result<(Vec<u8>, u32), SnapshotError> {
    let scan = scan(wasm)?;
    let mut r = Rewriter::new(scan);
    let safepoint = r.safepoint();
    let mut module = Module::new();
    r.parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| refuse(format!("cannot re-encode: {e}")))?;
    let out = module.finish();
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(&out)
        .map_err(|e| {
            refuse(format!(
                "the instrumented module is invalid (a Tern bug): {e}"
            ))
        })?;
    Ok((out, safepoint))
}

pub(crate) fn refuse(reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Rewrite {
        reason: reason.into(),
    }
}

pub(crate) fn val_type(t: wasmparser::ValType) -> Result<ValType, SnapshotError> {
    RoundtripReencoder
        .val_type(t)
        .map_err(|e| refuse(format!("unsupported value type: {e}")))
}

/// A function type: parameters and results.
pub(crate) type Sig = (Vec<ValType>, Vec<ValType>);

/// The signature of each type in a type section, in order (`None` for a type that is
/// not a function type).
pub(crate) fn signatures(
    reader: wasmparser::TypeSectionReader<'_>,
) -> Result<Vec<Option<Sig>>, SnapshotError> {
    let mut out = Vec::new();
    for group in reader {
        let group = group.map_err(|e| refuse(e.to_string()))?;
        for ty in group.into_types() {
            out.push(match ty.composite_type.inner {
                wasmparser::CompositeInnerType::Func(f) => Some((
                    f.params()
                        .iter()
                        .map(|t| val_type(*t))
                        .collect::<Result<_, _>>()?,
                    f.results()
                        .iter()
                        .map(|t| val_type(*t))
                        .collect::<Result<_, _>>()?,
                )),
                _ => None,
            });
        }
    }
    Ok(out)
}

fn scan(wasm: &[u8]) -> Result<Scan, SnapshotError> {
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(wasm)
        .map_err(|e| refuse(format!("not a valid WebAssembly module: {e}")))?;
    let mut s = Scan {
        data_clear_of_spills: true,
        ..Scan::default()
    };
    let mut memories = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| refuse(e.to_string()))?;
        match payload {
            Payload::Version {
                encoding: wasmparser::Encoding::Component,
                ..
            } => return Err(refuse("components cannot be made migratable yet")),
            Payload::TypeSection(reader) => s.func_types.extend(signatures(reader)?),
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| refuse(e.to_string()))?;
                    match import.ty {
                        TypeRef::Func(t) | TypeRef::FuncExact(t) => s.func_imports.push((
                            import.module.to_owned(),
                            import.name.to_owned(),
                            t,
                        )),
                        TypeRef::Global(g) if g.mutable => {
                            return Err(refuse(format!(
                                "it imports the mutable global {}.{}, which a snapshot cannot save",
                                import.module, import.name
                            )));
                        }
                        TypeRef::Global(_) => s.imported_globals += 1,
                        TypeRef::Memory(_) => memories += 1,
                        TypeRef::Tag(_) => return Err(exception_handling()),
                        TypeRef::Table(_) => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                s.defined_funcs = reader.count();
                for ty in reader {
                    s.defined_func_types
                        .push(ty.map_err(|e| refuse(e.to_string()))?);
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    let m = m.map_err(|e| refuse(e.to_string()))?;
                    if m.memory64 {
                        return Err(refuse("64-bit memories are not supported"));
                    }
                    memories += 1;
                }
            }
            Payload::TagSection(_) => return Err(exception_handling()),
            Payload::GlobalSection(reader) => {
                for (i, g) in reader.into_iter().enumerate() {
                    let g = g.map_err(|e| refuse(e.to_string()))?;
                    if g.ty.mutable {
                        s.mutable_globals.push(s.imported_globals + i as u32);
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for e in reader {
                    let e = e.map_err(|e| refuse(e.to_string()))?;
                    s.export_names.insert(e.name.to_owned());
                }
            }
            Payload::DataSection(reader) => {
                for d in reader {
                    let d = d.map_err(|e| refuse(e.to_string()))?;
                    if let wasmparser::DataKind::Active { offset_expr, .. } = d.kind {
                        let mut ops = offset_expr.get_operators_reader();
                        if let Ok(Operator::I32Const { value }) = ops.read() {
                            let start = value as u32 as u64;
                            let end = start + d.data.len() as u64;
                            if (start..end).contains(&u64::from(POLL_FLAG_ADDR)) {
                                return Err(refuse(format!(
                                    "it places data at address {POLL_FLAG_ADDR}, where Tern keeps its poll flag"
                                )));
                            }
                            if start < u64::from(SPILL_END) && end > u64::from(SPILL_START) {
                                s.data_clear_of_spills = false;
                            }
                        } else {
                            s.data_clear_of_spills = false;
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut ops = body
                    .get_operators_reader()
                    .map_err(|e| refuse(e.to_string()))?;
                while !ops.eof() {
                    let op = ops.read().map_err(|e| refuse(e.to_string()))?;
                    if matches!(
                        op,
                        Operator::Try { .. }
                            | Operator::TryTable { .. }
                            | Operator::Throw { .. }
                            | Operator::ThrowRef
                            | Operator::Rethrow { .. }
                            | Operator::Delegate { .. }
                            | Operator::Catch { .. }
                            | Operator::CatchAll
                    ) {
                        return Err(exception_handling());
                    }
                }
            }
            _ => {}
        }
    }
    if memories != 1 {
        return Err(refuse(format!(
            "it has {memories} memories; a migratable module has exactly one"
        )));
    }
    if s.export_names.iter().any(|n| n.starts_with("tern:")) {
        return Err(refuse("it already exports names starting with `tern:`"));
    }
    Ok(s)
}

fn exception_handling() -> SnapshotError {
    refuse(
        "it uses WebAssembly exception handling (setjmp/longjmp or C++ exceptions), \
         which cannot be unwound at a safe point; rebuild without -fwasm-exceptions",
    )
}

/// The order of non-custom sections in a module.
const SECTION_ORDER: [SectionId; 13] = [
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
struct NewImport {
    module: &'static str,
    name: String,
    ty: u32,
}

struct Rewriter {
    s: Scan,
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

impl Rewriter {
    fn new(s: Scan) -> Rewriter {
        let mut r = Rewriter {
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

    fn add_type(&mut self, params: Vec<ValType>, results: Vec<ValType>) -> u32 {
        self.new_types.push((params, results));
        (self.s.func_types.len() + self.new_types.len() - 1) as u32
    }

    /// Adds an import and returns its function index.
    fn add_import(&mut self, module: &'static str, name: &str, ty: u32) -> u32 {
        self.new_imports.push(NewImport {
            module,
            name: name.to_owned(),
            ty,
        });
        (self.s.func_imports.len() + self.new_imports.len() - 1) as u32
    }

    fn n_imports(&self) -> u32 {
        (self.s.func_imports.len() + self.new_imports.len()) as u32
    }

    fn safepoint(&self) -> u32 {
        self.s.func_imports.len() as u32
    }

    fn wrapper(&self, import: u32) -> u32 {
        self.n_imports() + self.s.defined_funcs + import
    }

    fn trampoline(&self, i: usize) -> u32 {
        self.wrapper(self.s.func_imports.len() as u32) + i as u32
    }

    fn emit_imports(&mut self, section: &mut ImportSection) {
        for imp in &self.new_imports {
            section.import(
                imp.module,
                &imp.name,
                wasm_encoder::EntityType::Function(imp.ty),
            );
        }
        self.emitted.insert(SectionId::Import as u8);
    }

    fn append_types(&mut self, types: &mut TypeSection) {
        for (params, results) in &self.new_types {
            types
                .ty()
                .function(params.iter().copied(), results.iter().copied());
        }
        self.emitted.insert(SectionId::Type as u8);
    }

    fn append_functions(&mut self, functions: &mut FunctionSection) {
        for (_, _, ty) in &self.s.func_imports {
            functions.function(*ty);
        }
        for (_, _, ty) in &self.restore_targets {
            functions.function(*ty);
        }
        self.emitted.insert(SectionId::Function as u8);
    }

    fn append_exports(&mut self, exports: &mut ExportSection) {
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

    fn append_code(&mut self, code: &mut CodeSection) {
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
    fn local_types(
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
    fn flag(&self, f: &mut Function) {
        f.instruction(&Instruction::I32Const(0));
        f.instruction(&Instruction::I32Load8U(MemArg {
            offset: u64::from(POLL_FLAG_ADDR),
            align: 0,
            target: MemArgTarget::Memory(0),
            ordering: None,
        }));
    }

    /// The in-loop poll: `if (flag) call safepoint`.
    fn poll(&self, f: &mut Function) {
        self.flag(f);
        f.instruction(&Instruction::If(BlockType::Empty));
        f.instruction(&Instruction::Call(self.safepoint()));
        f.instruction(&Instruction::End);
    }

    /// `wrapper(params) = { safepoint(); r = import(params); note(params, r)?; r }`
    fn wrapper_body(&self, import: u32) -> Function {
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

    fn trampoline_body(&self, target: u32, ty: u32) -> Function {
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

impl Reencode for Rewriter {
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

/// A local an out-of-line safe point stores before its call and reloads after it, so
/// that its value is not live across the call (see [`crate::liveness`]).
struct Spill {
    local: u32,
    ty: ValType,
    offset: u32,
}

impl Spill {
    fn memarg(&self) -> MemArg {
        MemArg {
            offset: u64::from(self.offset),
            align: value_size(self.ty).map_or(0, u32::trailing_zeros),
            target: MemArgTarget::Memory(0),
            ordering: None,
        }
    }

    fn store(&self) -> Instruction<'static> {
        store_value(self.ty, self.memarg())
    }

    fn load(&self) -> Instruction<'static> {
        load_value(self.ty, self.memarg())
    }
}

/// Bytes a value of type `ty` takes in linear memory; references cannot be stored there
/// (a spilled one stays live across the call, and the unwind pass refuses one live at a
/// safe point).
pub(crate) fn value_size(ty: ValType) -> Option<u32> {
    match ty {
        ValType::I32 | ValType::F32 => Some(4),
        ValType::I64 | ValType::F64 => Some(8),
        ValType::V128 => Some(16),
        ValType::Ref(_) => None,
    }
}

/// The store of a value of type `ty` (not a reference) at `m`.
pub(crate) fn store_value(ty: ValType, m: MemArg) -> Instruction<'static> {
    match ty {
        ValType::I32 => Instruction::I32Store(m),
        ValType::I64 => Instruction::I64Store(m),
        ValType::F32 => Instruction::F32Store(m),
        ValType::F64 => Instruction::F64Store(m),
        _ => Instruction::V128Store(m),
    }
}

/// The load of a value of type `ty` (not a reference) from `m`.
pub(crate) fn load_value(ty: ValType, m: MemArg) -> Instruction<'static> {
    match ty {
        ValType::I32 => Instruction::I32Load(m),
        ValType::I64 => Instruction::I64Load(m),
        ValType::F32 => Instruction::F32Load(m),
        ValType::F64 => Instruction::F64Load(m),
        _ => Instruction::V128Load(m),
    }
}

/// Places the `live` locals in the spill area, widest first so each is naturally
/// aligned; those that do not fit are left live across the call.
fn spill_layout(types: &[ValType], live: &[u32]) -> Vec<Spill> {
    let mut sized: Vec<(u32, ValType, u32)> = live
        .iter()
        .filter_map(|&l| {
            let ty = *types.get(l as usize)?;
            Some((l, ty, value_size(ty)?))
        })
        .collect();
    sized.sort_by_key(|&(l, _, size)| (std::cmp::Reverse(size), l));
    let mut offset = SPILL_START;
    let mut out = Vec::new();
    for (local, ty, size) in sized {
        if offset + size > SPILL_END {
            continue;
        }
        out.push(Spill { local, ty, offset });
        offset += size;
    }
    out
}

/// A branch depth in the instrumented code: each wrapped loop between the branch and
/// its target adds the three labels put around it.
fn shifted(frames: &[bool], depth: u32) -> u32 {
    let top = frames.len().saturating_sub(1);
    let target = top.saturating_sub(depth as usize);
    let wrapped = frames
        .get(target + 1..)
        .map_or(0, |inner| inner.iter().filter(|w| **w).count());
    depth + 3 * wrapped as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("valid wat")
    }

    const COUNTER: &str = r#"(module
        (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
        (memory (export "memory") 1)
        (global $sp (mut i32) (i32.const 4096))
        (func $main (export "_start") (local $i i32)
            (loop $l
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $l (i32.lt_u (local.get $i) (i32.const 10))))
            (drop (call $close (i32.const 99)))))"#;

    /// The instrumented module validates, adds the safe-point import, a poll after each
    /// loop, a wrapper per import and the exports a snapshot needs.
    #[test]
    fn adds_polls_wrappers_and_exports() {
        let out = instrument(&wat(COUNTER)).expect("instruments");
        let text = wasmprinter::print_bytes(&out).expect("prints");
        assert!(text.contains(r#"(import "tern" "safepoint""#), "{text}");
        assert!(text.contains(r#"(import "tern" "note_fd_close""#), "{text}");
        assert!(
            text.contains(r#"(export "tern:global:0" (global $sp))"#),
            "{text}"
        );
        assert!(text.contains(r#"(export "tern:path_open""#), "{text}");
        assert!(text.contains("i32.load8_u offset=8"), "{text}");
        assert_eq!(text.matches("i32.load8_u offset=8").count(), 1, "{text}");
    }

    /// Loops carrying i32, i64, f64 and v128 values; the outer loop's bound is a
    /// parameter (it keeps its poll), the inner one is counted (it needs none).
    const CARRIED: &str = r#"(module
        (memory (export "memory") 1)
        (global $ask (export "ask") (mut i32) (i32.const 0))
        (func (export "run") (param $n i32) (result i64 f64 i32)
          (local $i i32) (local $j i32) (local $a i64) (local $x f64) (local $v v128)
          (loop $outer
            (local.set $j (i32.const 0))
            (loop $inner
              (local.set $a (i64.add (local.get $a) (i64.extend_i32_u (local.get $j))))
              (local.set $x (f64.add (local.get $x) (f64.convert_i32_s (local.get $i))))
              (local.set $v (i32x4.add (local.get $v) (i32x4.splat (local.get $j))))
              (local.get $j) (i32.const 1) (i32.add) (local.tee $j)
              (i32.const 100) (i32.lt_s) (br_if 0))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            ;; As a host would: ask for a safe point at the next loop header.
            (i32.store8 offset=8 (i32.const 0) (global.get $ask))
            (br_if $outer (i32.lt_u (local.get $i) (local.get $n))))
          (local.get $a) (local.get $x) (i32x4.extract_lane 3 (local.get $v))))"#;

    /// Runs `run(1000)` of `wasm`, raising the poll flag after every outer iteration
    /// when `ask`, with a safe point that lowers it and counts; returns the results and
    /// the count.
    fn run_carried(wasm: &[u8], ask: bool) -> (Vec<u128>, u32) {
        use wasmtime::{Engine, Linker, Module as WModule, Store, Val};
        let engine = Engine::default();
        let module = WModule::new(&engine, wasm).expect("compiles");
        let mut linker = Linker::new(&engine);
        for import in module.imports() {
            let ty = import.ty().func().expect("function import").clone();
            let counts = import.name() == SAFEPOINT.1;
            linker
                .func_new(import.module(), import.name(), ty, move |mut c, _, _| {
                    if counts {
                        *c.data_mut() += 1;
                        let memory = c.get_export("memory").and_then(|e| e.into_memory());
                        let memory = memory.expect("memory");
                        memory.data_mut(&mut c)[POLL_FLAG_ADDR as usize] = 0;
                    }
                    Ok(())
                })
                .expect("defines");
        }
        let mut store = Store::new(&engine, 0u32);
        let instance = linker
            .instantiate(&mut store, &module)
            .expect("instantiates");
        let global = instance.get_global(&mut store, "ask").expect("ask");
        global.set(&mut store, Val::I32(ask.into())).expect("sets");
        let run = instance.get_func(&mut store, "run").expect("run");
        let mut out = [Val::I32(0), Val::I32(0), Val::I32(0)];
        run.call(&mut store, &[Val::I32(1000)], &mut out)
            .expect("runs");
        let bits = out
            .iter()
            .map(|v| match v {
                Val::I64(x) => *x as u64 as u128,
                Val::F64(x) => u128::from(*x),
                Val::I32(x) => *x as u32 as u128,
                _ => 0,
            })
            .collect();
        (bits, *store.data())
    }

    /// With the flag raised after every outer iteration, each iteration of the outer loop
    /// leaves through its out-of-line safe point, spilling and reloading the carried
    /// values: the results are those of the original, and the counted inner loop never
    /// polls.
    #[test]
    fn spilled_locals_come_back_intact_and_counted_loops_do_not_poll() {
        let original = wat(CARRIED);
        let out = instrument(&original).expect("instruments");
        let text = wasmprinter::print_bytes(&out).expect("prints");
        assert_eq!(text.matches("i32.load8_u offset=8").count(), 1, "{text}");
        assert!(
            text.contains("f64.store offset="),
            "the f64 is spilled: {text}"
        );
        assert!(
            text.contains("v128.store offset=16"),
            "widest first: {text}"
        );
        let (expected, _) = run_carried(&original, false);
        let (calm, calm_calls) = run_carried(&out, false);
        let (raised, raised_calls) = run_carried(&out, true);
        assert_eq!(calm, expected);
        assert_eq!(raised, expected);
        assert_eq!(calm_calls, 0);
        assert_eq!(
            raised_calls, 999,
            "one safe point per later outer iteration"
        );
    }

    /// Data in the spill area turns spilling off rather than clobbering it.
    #[test]
    fn data_in_the_spill_area_turns_spills_off() {
        let with_data = CARRIED.replace(
            r#"(memory (export "memory") 1)"#,
            r#"(memory (export "memory") 1) (data (i32.const 100) "busy")"#,
        );
        let out = instrument(&wat(&with_data)).expect("instruments");
        let text = wasmprinter::print_bytes(&out).expect("prints");
        assert!(!text.contains("f64.store offset="), "{text}");
        let (expected, _) = run_carried(&wat(&with_data), false);
        assert_eq!(run_carried(&out, true).0, expected);
    }

    #[test]
    fn exception_handling_is_refused() {
        let m = wat(r#"(module (memory 1) (tag $e) (func (throw $e)))"#);
        let err = instrument(&m).expect_err("exceptions cannot be unwound");
        assert!(err.to_string().contains("exception handling"), "{err}");
    }

    #[test]
    fn data_on_the_poll_flag_is_refused() {
        let m = wat(r#"(module (memory 1) (data (i32.const 0) "0123456789"))"#);
        let err = instrument(&m).expect_err("flag address is taken");
        assert!(err.to_string().contains("poll flag"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        let err = instrument(b"\0asm\x01\0\0\0\x05").expect_err("truncated");
        assert!(
            err.to_string().contains("not a valid WebAssembly module"),
            "{err}"
        );
    }
}
