//! Tern's unwind/rewind pass: the second half of the migratable rewrite. It makes every
//! call that can reach `tern.safepoint` able to unwind the whole call stack into linear
//! memory and rewind it later — the technique of Binaryen's Asyncify, with the same five
//! exports (`asyncify_start_unwind`, …), so the host drives both the same way.
//!
//! Asyncify saves, at every unwind site of a function, the union of the locals live at
//! *any* of its sites, and guards the code after each call with a state check it cannot
//! prove false; every saved local is thereby live across every call that may unwind, and
//! Cranelift keeps loop values on the stack around them. On eight PolyBench kernels that
//! took the pre-pass's 1.50× native to 2.29×. No Binaryen option changes it, so this pass
//! is Tern's own, on `wasmparser` and `wasm-encoder`. It differs in three ways:
//!
//! - **Per-site records.** Each site saves exactly the locals live after its call
//!   ([`crate::liveness`]) and its own index; nothing else is made live.
//! - **Operand-stack values moved to locals.** Values on the operand stack under a
//!   site's arguments (or under a block that contains a site) are stored to fresh locals
//!   before it and reloaded after it, so a site is always entered with an empty stack.
//! - **Rewind by forward jumps, in a clone.** Each block, loop or `if` body that contains
//!   sites opens one `block` per site-holding child ("landing"), innermost first. On a
//!   rewind, a `br_table` on the saved site index jumps to the landing right before the
//!   child that holds the site; nested levels do the same, and an `if` is entered on the
//!   side that holds it. That code lives only in a *resume clone* of each function: the
//!   function itself starts with `if (state == rewinding) return clone(params)` and has no
//!   landings at all. Landings were measured to cost even though they run only on a
//!   rewind: their edges into every level left Cranelift short of registers in the hot
//!   loops (PolyBench's lu: 15.1 ms with the pre-pass alone, 23.3 ms with landings in the
//!   function, 15.1 ms with them in the clone). A resumed frame runs its clone until it
//!   returns; every new call runs the fast function. Normal execution pays one state
//!   check at each function's entry and one after each call that may unwind.
//!
//! Unwind records live in a memory of their own that the pass adds to the module
//! ([`UNWIND_MEMORY`], [`UNWIND_MEMORY_PAGES`] pages, exported for the host), never in the
//! guest's memory: the guest's code does not address it, so no allocator can hand it out.
//! (Pages added to the guest's memory were handed out: wasi-libc's malloc of 2022 takes
//! everything up to `memory.size` at its first call as its heap, so pages the host grew
//! for a checkpoint taken before that call became the guest's heap, and every later
//! unwind wrote its records into the guest's data.) The data area is
//! `[current: i32, end: i32]` at the address given to `asyncify_start_unwind`, records
//! pushed at `current`. A frame's record is its
//! saved locals then its site index; the innermost frame is pushed first and the
//! outermost frame, which rewinds first, pops its record from the top. A record that
//! does not fit traps (`unreachable`), as Asyncify does.

use std::collections::HashMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, Encode as _, ExportKind, ExportSection, Function,
    FunctionSection, GlobalSection, GlobalType, Instruction, MemArg, MemArgTarget, MemorySection,
    MemoryType, Module, SectionId, TypeSection, ValType,
};
use wasmparser::{FuncValidatorAllocations, Operator, Parser, Payload, ValidPayload, Validator};

use crate::instrument::{Sig, load_value, signatures, store_value, val_type, value_size};
use crate::{PassError, defect, invalid, refuse};

mod body;
use body::*;
mod assemble;
use assemble::*;

/// What identifies the pass: its source, part of the migratable rewrite's cache key.
pub const IDENTITY: &str = concat!(
    include_str!("mod.rs"),
    include_str!("body.rs"),
    include_str!("assemble.rs")
);

const NORMAL: i32 = 0;
const UNWINDING: i32 = 1;
const REWINDING: i32 = 2;

/// Export name of the memory the pass adds for unwind records.
pub const UNWIND_MEMORY: &str = "tern:unwind";

/// Size of that memory in 64 KiB pages (1 MiB) once the host has grown it, at the first
/// checkpoint: it starts empty, so a guest never checkpointed pays nothing for it. A
/// stack whose records do not fit traps at its unwind, as Asyncify does.
pub const UNWIND_MEMORY_PAGES: u32 = 16;

/// The exports the host drives an unwind and a rewind with (Asyncify's names).
const EXPORTS: [&str; 5] = [
    "asyncify_start_unwind",
    "asyncify_stop_unwind",
    "asyncify_start_rewind",
    "asyncify_stop_rewind",
    "asyncify_get_state",
];

/// Rewrites the pre-pass's output `wasm`, whose function `safepoint` is the one import
/// that may unwind, as described in the module docs.
pub fn unwindable(wasm: &[u8], safepoint: u32) -> Result<Vec<u8>, PassError> {
    let m = call_graph(wasm)?;
    let unwinds = unwinding_functions(&m, safepoint)?;
    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    // Resume clones follow the module's functions, in the order of their originals.
    let mut clones: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut validator = Validator::new_with_features(wasmparser::WasmFeatures::all());
    let mut allocs = FuncValidatorAllocations::default();
    let mut defined = 0usize;
    let globals = Globals::after(m.globals);
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(invalid)?;
        if let ValidPayload::Func(to_validate, body) = validator
            .payload(&payload)
            .map_err(|e| invalid(format!("not a valid WebAssembly module: {e}")))?
        {
            let index = m.imported + defined as u32;
            defined += 1;
            let validator = to_validate.into_validator(std::mem::take(&mut allocs));
            if unwinds[index as usize] {
                let clone_index = m.func_types.len() as u32 + clones.len() as u32;
                let f = FunctionPass::new(&m, &unwinds, safepoint, index, clone_index, globals);
                let (bytes, clone, v) = f.run(&body, validator)?;
                allocs = v.into_allocations();
                bodies.insert(index - m.imported, bytes);
                clones.push((m.func_types[index as usize], clone));
            } else {
                allocs = validator.into_allocations();
            }
        }
    }
    assemble(wasm, &m, globals, bodies, clones)
}

/// The pass's globals, appended after the module's own.
#[derive(Clone, Copy)]
struct Globals {
    /// Normal, unwinding or rewinding.
    state: u32,
    /// Address of the host's unwind data: `[current, end]`, then the records.
    data: u32,
    /// The site a rewind is headed for: a global, not a local, so that it is not live
    /// across every loop whose level may dispatch.
    site: u32,
}

impl Globals {
    fn after(module_globals: u32) -> Globals {
        Globals {
            state: module_globals,
            data: module_globals + 1,
            site: module_globals + 2,
        }
    }
}

/// What the pass needs to know of the module.
struct CallGraph {
    types: Vec<Option<Sig>>,
    imported: u32,
    /// Type index of every function, imports first.
    func_types: Vec<u32>,
    globals: u32,
    has_globals: bool,
    /// Memories, imported and defined: the pass's own memory takes the next index.
    memories: u32,
    has_memories: bool,
    /// The calls each defined function makes.
    calls: Vec<Vec<Callee>>,
}

/// A call a function makes.
enum Callee {
    Direct(u32),
    Indirect(u32),
    /// `call_ref` or a tail call, which this pass does not rewind through.
    Unsupported(&'static str),
}

fn call_graph(wasm: &[u8]) -> Result<CallGraph, PassError> {
    let mut s = CallGraph {
        types: Vec::new(),
        imported: 0,
        func_types: Vec::new(),
        globals: 0,
        has_globals: false,
        memories: 0,
        has_memories: false,
        calls: Vec::new(),
    };
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(invalid)? {
            Payload::TypeSection(reader) => s.types.extend(signatures(reader)?),
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import.map_err(invalid)?.ty {
                        wasmparser::TypeRef::Func(t) | wasmparser::TypeRef::FuncExact(t) => {
                            s.imported += 1;
                            s.func_types.push(t);
                        }
                        wasmparser::TypeRef::Global(_) => s.globals += 1,
                        wasmparser::TypeRef::Memory(_) => s.memories += 1,
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for t in reader {
                    s.func_types.push(t.map_err(invalid)?);
                }
            }
            Payload::GlobalSection(reader) => {
                s.has_globals = true;
                s.globals += reader.count();
            }
            Payload::MemorySection(reader) => {
                s.has_memories = true;
                s.memories += reader.count();
            }
            Payload::ExportSection(reader) => {
                for e in reader {
                    let e = e.map_err(invalid)?;
                    if EXPORTS.contains(&e.name) || e.name == UNWIND_MEMORY {
                        return Err(refuse(format!("it already exports {}", e.name)));
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut calls = Vec::new();
                let mut ops = body.get_operators_reader().map_err(invalid)?;
                while !ops.eof() {
                    calls.push(match ops.read().map_err(invalid)? {
                        Operator::Call { function_index } => Callee::Direct(function_index),
                        Operator::CallIndirect { type_index, .. } => Callee::Indirect(type_index),
                        Operator::CallRef { .. } => Callee::Unsupported("call_ref"),
                        Operator::ReturnCall { .. }
                        | Operator::ReturnCallIndirect { .. }
                        | Operator::ReturnCallRef { .. } => Callee::Unsupported("a tail call"),
                        _ => continue,
                    });
                }
                s.calls.push(calls);
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Which functions (by absolute index) may have `safepoint` below them on the stack: the
/// safe point itself, and by a fixed point every function that calls one of them directly
/// or through a `call_indirect` whose type one of them has.
fn unwinding_functions(m: &CallGraph, safepoint: u32) -> Result<Vec<bool>, PassError> {
    let n = m.func_types.len();
    let mut unwinds = vec![false; n];
    if let Some(u) = unwinds.get_mut(safepoint as usize) {
        *u = true;
    }
    let sig = |t: u32| m.types.get(t as usize).cloned().flatten();
    let mut changed = true;
    while changed {
        changed = false;
        let unwinding_sigs: Vec<Sig> = (0..n)
            .filter(|&f| unwinds[f] && f as u32 >= m.imported)
            .filter_map(|f| sig(m.func_types[f]))
            .collect();
        for (i, calls) in m.calls.iter().enumerate() {
            let f = m.imported as usize + i;
            if unwinds[f] {
                continue;
            }
            let reaches = calls.iter().any(|c| match c {
                Callee::Direct(g) => unwinds.get(*g as usize).copied().unwrap_or(false),
                Callee::Indirect(t) => sig(*t).is_some_and(|s| unwinding_sigs.contains(&s)),
                Callee::Unsupported(_) => false,
            });
            if reaches {
                unwinds[f] = true;
                changed = true;
            }
        }
    }
    for (i, calls) in m.calls.iter().enumerate() {
        if unwinds[m.imported as usize + i]
            && let Some(Callee::Unsupported(what)) =
                calls.iter().find(|c| matches!(c, Callee::Unsupported(_)))
        {
            return Err(refuse(format!(
                "function {} can reach a safe point and uses {what}, which cannot be unwound",
                m.imported as usize + i
            )));
        }
    }
    Ok(unwinds)
}

/// A call that may unwind.
struct Site {
    /// Values on the operand stack of its level under its arguments, bottom first.
    below: Vec<ValType>,
    /// Its arguments (for `call_indirect`, the table index last).
    args: Vec<ValType>,
    results: Vec<ValType>,
    indirect: bool,
}

/// A `block`, `loop` or `if` that contains a site.
struct Construct {
    /// Values on the operand stack of the enclosing level when it starts, bottom first;
    /// its parameters and (for an `if`) its condition are the last ones.
    stack: Vec<ValType>,
    params: usize,
    results: Vec<ValType>,
    is_if: bool,
    /// Sites inside it: `lo..hi`; those of an `if`'s `then` side: `lo..then_hi`.
    lo: u32,
    then_hi: u32,
    hi: u32,
}

impl Construct {
    /// How many of the enclosing level's values stay on the stack under it.
    fn kept(&self) -> usize {
        self.stack.len() - self.params - usize::from(self.is_if)
    }
}

/// Key of a level (a sequence of operators with its own labels): the index of the
/// operator that opens it (`block`, `loop`, `if`, `else`), or `FUNCTION` for the body.
const FUNCTION: usize = usize::MAX;

/// What the analysis learns of one function.
#[derive(Default)]
struct Plan {
    /// Site number by operator index.
    sites: HashMap<usize, u32>,
    site_info: Vec<Site>,
    constructs: HashMap<usize, Construct>,
    /// Site-holding children of each level, by operator index, in program order.
    levels: HashMap<usize, Vec<usize>>,
}

/// A temp local allocator: locals by type, handed out and given back in stack order so
/// that a value kept across a nested construct is never reused inside it.
#[derive(Default)]
struct Temps {
    first: u32,
    /// Locals added to the function, in order.
    added: Vec<ValType>,
    pool: HashMap<ValType, Vec<u32>>,
    used: HashMap<ValType, usize>,
}

impl Temps {
    fn fresh(&mut self, ty: ValType) -> u32 {
        self.added.push(ty);
        self.first + self.added.len() as u32 - 1
    }

    fn take(&mut self, ty: ValType) -> u32 {
        let used = self.used.entry(ty).or_default();
        let pool = self.pool.entry(ty).or_default();
        if *used == pool.len() {
            self.added.push(ty);
            pool.push(self.first + self.added.len() as u32 - 1);
        }
        *used += 1;
        pool[*used - 1]
    }

    fn mark(&self) -> HashMap<ValType, usize> {
        self.used.clone()
    }

    fn reset(&mut self, mark: HashMap<ValType, usize>) {
        self.used = mark;
    }
}

/// What a site's unwind record holds: each local with its type and offset, in local
/// order, then (at `size`) the site index.
#[derive(Default, Clone, PartialEq)]
struct Record {
    slots: Vec<(u32, ValType, u32)>,
    size: u32,
}

impl Record {
    /// Lays out `locals` (sorted, without duplicates).
    fn of(locals: &[(u32, ValType)]) -> Result<Record, PassError> {
        let mut r = Record::default();
        for (l, ty) in locals {
            let bytes = value_size(*ty).ok_or_else(|| {
                refuse(
                    "a reference-typed value is live at a safe point; it cannot be saved to memory",
                )
            })?;
            r.slots.push((*l, *ty, r.size));
            r.size += bytes;
        }
        Ok(r)
    }
}

/// One level being written: its entries and how many of their landings are still open.
struct Level {
    entries: Vec<usize>,
    next: usize,
    dispatch: bool,
    /// For the body of a construct that is an entry: the temps holding the values of the
    /// enclosing level under it (reloaded after its `end`), the temp mark to return to
    /// then, and its result types.
    entry: Option<EntryEnd>,
}

type EntryEnd = (Vec<(u32, ValType)>, HashMap<ValType, usize>, Vec<ValType>);

struct FunctionPass<'a> {
    m: &'a CallGraph,
    unwinds: &'a [bool],
    safepoint: u32,
    index: u32,
    g: Globals,
    plan: Plan,
    temps: Temps,
    ptr_local: u32,
    cond_local: u32,
    /// Types of the function's parameters and locals, then of the added ones.
    local_types: Vec<ValType>,
    /// For each output label, whether it is one of the original's (not a landing).
    labels: Vec<bool>,
    levels: Vec<Level>,
    /// Temps of values kept under open constructs: live at every site inside them.
    pinned: Vec<(u32, ValType)>,
    /// For each site, its record.
    records: Vec<Record>,
    out: Vec<u8>,
    /// The analysis's open constructs.
    open: Vec<Open>,
    /// Writing the resume clone (landings and dispatch), not the function itself.
    resume: bool,
    /// Function index of the resume clone.
    clone_index: u32,
}

fn emit(out: &mut Vec<u8>, i: &Instruction<'_>) {
    i.encode(out);
}

/// A load or store at `offset` in the pass's own memory, `memory`.
fn memarg(memory: u32, offset: u32) -> MemArg {
    MemArg {
        offset: u64::from(offset),
        align: 0,
        target: MemArgTarget::Memory(memory),
        ordering: None,
    }
}

fn zero(ty: ValType) -> Instruction<'static> {
    match ty {
        ValType::I32 => Instruction::I32Const(0),
        ValType::I64 => Instruction::I64Const(0),
        ValType::F32 => Instruction::F32Const(0.0.into()),
        ValType::F64 => Instruction::F64Const(0.0.into()),
        ValType::V128 => Instruction::V128Const(0),
        ValType::Ref(r) => Instruction::RefNull(r.heap_type),
    }
}

impl<'a> FunctionPass<'a> {
    fn new(
        m: &'a CallGraph,
        unwinds: &'a [bool],
        safepoint: u32,
        index: u32,
        clone_index: u32,
        g: Globals,
    ) -> FunctionPass<'a> {
        FunctionPass {
            m,
            unwinds,
            safepoint,
            index,
            g,
            plan: Plan::default(),
            temps: Temps::default(),
            ptr_local: 0,
            cond_local: 0,
            local_types: Vec::new(),
            labels: Vec::new(),
            levels: Vec::new(),
            pinned: Vec::new(),
            records: Vec::new(),
            out: Vec::new(),
            open: Vec::new(),
            resume: false,
            clone_index,
        }
    }

    fn sig(&self, type_index: u32) -> Sig {
        self.m
            .types
            .get(type_index as usize)
            .cloned()
            .flatten()
            .unwrap_or_default()
    }

    fn block_sig(&self, bt: wasmparser::BlockType) -> Result<Sig, PassError> {
        Ok(match bt {
            wasmparser::BlockType::Empty => (vec![], vec![]),
            wasmparser::BlockType::Type(t) => (vec![], vec![val_type(t)?]),
            wasmparser::BlockType::FuncType(i) => self.sig(i),
        })
    }

    fn callee_may_unwind(&self, op: &Operator<'_>) -> Option<(Sig, bool)> {
        match *op {
            Operator::Call { function_index } => {
                let unwinds = function_index == self.safepoint
                    || self
                        .unwinds
                        .get(function_index as usize)
                        .copied()
                        .unwrap_or(false);
                let ty = *self.m.func_types.get(function_index as usize)?;
                unwinds.then(|| (self.sig(ty), false))
            }
            Operator::CallIndirect { type_index, .. } => {
                let sig = self.sig(type_index);
                let any = (self.m.imported as usize..self.m.func_types.len())
                    .any(|f| self.unwinds[f] && self.sig(self.m.func_types[f]) == sig);
                any.then_some((sig, true))
            }
            _ => None,
        }
    }

    /// Runs the analysis and writes the new body; returns it with the validator.
    fn run(
        mut self,
        body: &wasmparser::FunctionBody<'_>,
        mut v: wasmparser::FuncValidator<wasmparser::ValidatorResources>,
    ) -> Result<(Vec<u8>, Vec<u8>, Validated), PassError> {
        let bad = |e: wasmparser::BinaryReaderError| invalid(format!("invalid function: {e}"));
        let (params, _) = self.sig(self.m.func_types[self.index as usize]);
        let mut declared: Vec<(u32, ValType)> = Vec::new();
        self.local_types = params;
        let mut locals = body.get_locals_reader().map_err(bad)?;
        for _ in 0..locals.get_count() {
            let offset = locals.original_position();
            let (count, ty) = locals.read().map_err(bad)?;
            v.define_locals(offset, count, ty).map_err(bad)?;
            let ty = val_type(ty)?;
            if self.local_types.len() + count as usize > 1 << 20 {
                return Err(refuse("a function declares too many locals"));
            }
            declared.push((count, ty));
            self.local_types
                .extend(std::iter::repeat_n(ty, count as usize));
        }
        // The function body is the outermost construct, known to hold any site.
        self.open.push(Open {
            op: FUNCTION,
            level: FUNCTION,
            dead: false,
            marked: true,
            stack: vec![],
            sig: (vec![], vec![]),
            is_if: false,
            lo: 0,
            then_hi: None,
        });
        let mut reader = body.get_operators_reader().map_err(bad)?;
        let mut ops: Vec<Operator<'_>> = Vec::new();
        while !reader.eof() {
            let (op, offset) = reader.read_with_offset().map_err(bad)?;
            self.observe(&v, ops.len(), &op)?;
            v.op(offset, &op).map_err(bad)?;
            ops.push(op);
        }

        let n_locals = self.local_types.len() as u32;

        // Locals live after each site's call, in the original's numbering.
        let mut points: Vec<(usize, u32)> = self
            .plan
            .sites
            .iter()
            .map(|(&op, &s)| (op + 1, s))
            .collect();
        points.sort_unstable();
        let at: Vec<usize> = points.iter().map(|(p, _)| *p).collect();
        let live = crate::liveness::live_before(&ops, n_locals, &at);
        let mut live_after: Vec<Vec<u32>> = vec![Vec::new(); self.plan.site_info.len()];
        for (i, (_, s)) in points.iter().enumerate() {
            live_after[*s as usize] = match &live {
                Some(l) => l[i].clone(),
                // Too large to analyse: every local is kept.
                None => (0..n_locals).collect(),
            };
        }

        // The function itself: no landings, only the unwind check after each site,
        // and at entry the hand-over of a rewind to its resume clone.
        self.start_writing(false);
        self.body(&ops, &live_after)?;
        let body = std::mem::take(&mut self.out);
        self.hand_over();
        let mut code = std::mem::take(&mut self.out);
        code.extend(body);
        let records = std::mem::take(&mut self.records);
        let added = std::mem::take(&mut self.temps.added);

        // The resume clone: the same code with landings, entered only to rewind.
        self.start_writing(true);
        self.body(&ops, &live_after)?;
        if self.records != records || self.temps.added != added {
            return Err(refuse(
                "the resume clone saves other records than its function (a Tern bug)",
            ));
        }
        let clone_body = std::mem::take(&mut self.out);
        self.prologue();
        let mut clone_code = std::mem::take(&mut self.out);
        clone_code.extend(clone_body);

        for ty in added {
            declared.push((1, ty));
        }
        let mut f = Function::new(declared.clone());
        f.raw(code);
        let mut clone = Function::new(declared);
        clone.raw(clone_code);
        Ok((f.into_raw_body(), clone.into_raw_body(), v))
    }

    /// Readies the writer for the function itself or its resume clone: both start from
    /// the same temps, so that they take the same ones and save the same records.
    fn start_writing(&mut self, resume: bool) {
        self.temps = Temps {
            first: self.local_types.len() as u32,
            ..Temps::default()
        };
        self.ptr_local = self.temps.fresh(ValType::I32);
        self.cond_local = self.temps.fresh(ValType::I32);
        self.labels.clear();
        self.levels.clear();
        self.pinned.clear();
        self.resume = resume;
    }

    /// The start of the function itself: a call while rewinding goes to the resume clone,
    /// whose results (dummies when it unwinds again) it returns. It saves no record of its
    /// own: on the next rewind its caller calls it again and it hands over again.
    fn hand_over(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let (params, _) = self.sig(self.m.func_types[self.index as usize]);
        self.op(&Instruction::GlobalGet(self.g.state));
        self.op(&Instruction::I32Const(REWINDING));
        self.op(&Instruction::I32Eq);
        self.op(&Instruction::If(BlockType::Empty));
        for i in 0..params.len() as u32 {
            self.op(&Instruction::LocalGet(i));
        }
        self.op(&Instruction::Call(self.clone_index));
        self.op(&Instruction::Return);
        self.op(&Instruction::End);
    }
}
