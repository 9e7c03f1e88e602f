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
//! Unwind records live in the host's data area: `[current: i32, end: i32]` at the address
//! given to `asyncify_start_unwind`, records pushed at `current`. A frame's record is its
//! saved locals then its site index; the innermost frame is pushed first and the
//! outermost frame, which rewinds first, pops its record from the top. A record that
//! does not fit traps (`unreachable`), as Asyncify does.

use std::collections::HashMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, Encode as _, ExportKind, ExportSection, Function,
    FunctionSection, GlobalSection, GlobalType, Instruction, MemArg, MemArgTarget, Module,
    SectionId, TypeSection, ValType,
};
use wasmparser::{FuncValidatorAllocations, Operator, Parser, Payload, ValidPayload, Validator};

use crate::SnapshotError;
use crate::instrument::{Sig, load_value, refuse, signatures, store_value, val_type, value_size};

const NORMAL: i32 = 0;
const UNWINDING: i32 = 1;
const REWINDING: i32 = 2;

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
pub(crate) fn unwindable(wasm: &[u8], safepoint: u32) -> Result<Vec<u8>, SnapshotError> {
    let m = scan(wasm)?;
    let unwinds = unwinding_functions(&m, safepoint)?;
    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    // Resume clones follow the module's functions, in the order of their originals.
    let mut clones: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut validator = Validator::new_with_features(wasmparser::WasmFeatures::all());
    let mut allocs = FuncValidatorAllocations::default();
    let mut defined = 0usize;
    let globals = Globals::after(m.globals);
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| refuse(e.to_string()))?;
        if let ValidPayload::Func(to_validate, body) = validator
            .payload(&payload)
            .map_err(|e| refuse(format!("not a valid WebAssembly module: {e}")))?
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
struct Scan {
    types: Vec<Option<Sig>>,
    imported: u32,
    /// Type index of every function, imports first.
    func_types: Vec<u32>,
    globals: u32,
    has_globals: bool,
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

fn scan(wasm: &[u8]) -> Result<Scan, SnapshotError> {
    let mut s = Scan {
        types: Vec::new(),
        imported: 0,
        func_types: Vec::new(),
        globals: 0,
        has_globals: false,
        calls: Vec::new(),
    };
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| refuse(e.to_string()))? {
            Payload::TypeSection(reader) => s.types.extend(signatures(reader)?),
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import.map_err(|e| refuse(e.to_string()))?.ty {
                        wasmparser::TypeRef::Func(t) | wasmparser::TypeRef::FuncExact(t) => {
                            s.imported += 1;
                            s.func_types.push(t);
                        }
                        wasmparser::TypeRef::Global(_) => s.globals += 1,
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for t in reader {
                    s.func_types.push(t.map_err(|e| refuse(e.to_string()))?);
                }
            }
            Payload::GlobalSection(reader) => {
                s.has_globals = true;
                s.globals += reader.count();
            }
            Payload::ExportSection(reader) => {
                for e in reader {
                    let e = e.map_err(|e| refuse(e.to_string()))?;
                    if EXPORTS.contains(&e.name) {
                        return Err(refuse(format!("it already exports {}", e.name)));
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let mut calls = Vec::new();
                let mut ops = body
                    .get_operators_reader()
                    .map_err(|e| refuse(e.to_string()))?;
                while !ops.eof() {
                    calls.push(match ops.read().map_err(|e| refuse(e.to_string()))? {
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
fn unwinding_functions(m: &Scan, safepoint: u32) -> Result<Vec<bool>, SnapshotError> {
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
    fn of(locals: &[(u32, ValType)]) -> Result<Record, SnapshotError> {
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
    m: &'a Scan,
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

fn memarg(offset: u32) -> MemArg {
    MemArg {
        offset: u64::from(offset),
        align: 0,
        target: MemArgTarget::Memory(0),
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
        m: &'a Scan,
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

    fn block_sig(&self, bt: wasmparser::BlockType) -> Result<Sig, SnapshotError> {
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
    ) -> Result<(Vec<u8>, Vec<u8>, Validated), SnapshotError> {
        let bad = |e: wasmparser::BinaryReaderError| refuse(format!("invalid function: {e}"));
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

/// A function's validator, handed back for its allocations.
type Validated = wasmparser::FuncValidator<wasmparser::ValidatorResources>;

/// The frame the analysis keeps for each open control construct.
struct Open {
    op: usize,
    level: usize,
    dead: bool,
    marked: bool,
    stack: Vec<ValType>,
    sig: Sig,
    is_if: bool,
    lo: u32,
    then_hi: Option<u32>,
}

impl FunctionPass<'_> {
    /// The operand stack of the current frame, bottom first; `None` in unreachable code.
    fn frame_stack(
        v: &wasmparser::FuncValidator<wasmparser::ValidatorResources>,
    ) -> Result<Option<Vec<ValType>>, SnapshotError> {
        let Some(frame) = v.get_control_frame(0) else {
            return Ok(None);
        };
        if frame.unreachable {
            return Ok(None);
        }
        let height = v.operand_stack_height() as usize;
        let mut out = Vec::with_capacity(height - frame.height);
        for depth in (0..height - frame.height).rev() {
            match v.get_operand_type(depth) {
                Some(Some(t)) => out.push(val_type(t)?),
                _ => return Ok(None),
            }
        }
        Ok(Some(out))
    }
}

impl FunctionPass<'_> {
    /// Looks at operator `i` before the validator takes it.
    fn observe(
        &mut self,
        v: &wasmparser::FuncValidator<wasmparser::ValidatorResources>,
        i: usize,
        op: &Operator<'_>,
    ) -> Result<(), SnapshotError> {
        let mut open = std::mem::take(&mut self.open);
        let r = self.observe_with(v, i, op, &mut open);
        self.open = open;
        r
    }

    fn observe_with(
        &mut self,
        v: &wasmparser::FuncValidator<wasmparser::ValidatorResources>,
        i: usize,
        op: &Operator<'_>,
        w: &mut Vec<Open>,
    ) -> Result<(), SnapshotError> {
        let dead_here = w.last().is_none_or(|o| o.dead);
        match *op {
            Operator::Block { blockty } | Operator::Loop { blockty } | Operator::If { blockty } => {
                let stack = if dead_here {
                    None
                } else {
                    Self::frame_stack(v)?
                };
                let sig = self.block_sig(blockty)?;
                w.push(Open {
                    op: i,
                    level: i,
                    dead: stack.is_none(),
                    marked: false,
                    stack: stack.unwrap_or_default(),
                    sig,
                    is_if: matches!(op, Operator::If { .. }),
                    lo: self.plan.site_info.len() as u32,
                    then_hi: None,
                });
            }
            Operator::Else => {
                let n = self.plan.site_info.len() as u32;
                if let Some(o) = w.last_mut() {
                    o.then_hi = Some(n);
                    o.level = i;
                }
            }
            Operator::End => {
                let n = self.plan.site_info.len() as u32;
                if let Some(o) = w.pop()
                    && o.op != FUNCTION
                    && o.marked
                {
                    self.plan.constructs.insert(
                        o.op,
                        Construct {
                            stack: o.stack,
                            params: o.sig.0.len(),
                            results: o.sig.1,
                            is_if: o.is_if,
                            lo: o.lo,
                            then_hi: o.then_hi.unwrap_or(n),
                            hi: n,
                        },
                    );
                }
            }
            Operator::Call { .. } | Operator::CallIndirect { .. } if !dead_here => {
                if let Some(((params, results), indirect)) = self.callee_may_unwind(op)
                    && let Some(stack) = Self::frame_stack(v)?
                {
                    let n_args = params.len() + usize::from(indirect);
                    let split = stack.len() - n_args;
                    let s = self.plan.site_info.len() as u32;
                    self.plan.site_info.push(Site {
                        below: stack[..split].to_vec(),
                        args: stack[split..].to_vec(),
                        results,
                        indirect,
                    });
                    self.plan.sites.insert(i, s);
                    // The site is an entry of its level; each enclosing construct
                    // not yet known to hold a site becomes one of its parent's.
                    let mut child = i;
                    for j in (0..w.len()).rev() {
                        let level = w[j].level;
                        self.plan.levels.entry(level).or_default().push(child);
                        if j > 0 && !w[j].marked {
                            w[j].marked = true;
                            child = w[j].op;
                        } else {
                            break;
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// What `enter` did: the temps the level's stack went to (bottom first, an `if`'s
/// condition excluded), the temp mark before them and the mark after the values that
/// stay under the entry.
struct Entered {
    temps: Vec<(u32, ValType)>,
    before: HashMap<ValType, usize>,
    after_below: HashMap<ValType, usize>,
}

impl FunctionPass<'_> {
    fn op(&mut self, i: &Instruction<'_>) {
        emit(&mut self.out, i);
    }

    /// The output depth of original branch depth `depth`.
    fn depth(&self, depth: u32) -> u32 {
        let mut seen = 0;
        for (out, original) in self.labels.iter().rev().enumerate() {
            if *original {
                if seen == depth {
                    return out as u32;
                }
                seen += 1;
            }
        }
        // Validation guarantees the target exists.
        depth
    }

    /// The site numbers an entry of a level covers.
    fn entry_range(&self, entry: usize) -> (u32, u32) {
        match self.plan.sites.get(&entry) {
            Some(&s) => (s, s + 1),
            None => self
                .plan
                .constructs
                .get(&entry)
                .map_or((0, 0), |c| (c.lo, c.hi)),
        }
    }

    /// The level's stack at an entry, bottom first (an `if`'s condition included).
    fn entry_stack(&self, entry: usize) -> Vec<ValType> {
        match self.plan.sites.get(&entry) {
            Some(&s) => {
                let site = &self.plan.site_info[s as usize];
                site.below.iter().chain(&site.args).copied().collect()
            }
            None => self
                .plan
                .constructs
                .get(&entry)
                .map_or_else(Vec::new, |c| c.stack.clone()),
        }
    }

    /// Starts a level whose first operator is `first`, with parameters `params`. When a
    /// rewind may have to skip code to reach one of its entries, it opens one landing
    /// block per entry and, on a rewind, jumps to the right one.
    fn open_level(
        &mut self,
        key: usize,
        first: usize,
        params: &[ValType],
        entry: Option<EntryEnd>,
    ) {
        let entries = self.plan.levels.get(&key).cloned().unwrap_or_default();
        let dispatch = match entries.as_slice() {
            [] => false,
            [only] => !(*only == first && params.is_empty() && self.entry_stack(*only).is_empty()),
            _ => true,
        };
        // The function itself takes the same temps as its clone, so that both save the
        // same records, but writes none of this.
        if dispatch {
            let mark = self.temps.mark();
            let saved: Vec<u32> = params.iter().map(|t| self.temps.take(*t)).collect();
            if self.resume {
                self.dispatch(&entries, &saved);
            }
            self.temps.reset(mark);
        }
        self.levels.push(Level {
            entries,
            next: 0,
            dispatch,
            entry,
        });
    }

    /// Opens the landings of a level's entries and, when rewinding, jumps to the one
    /// before the entry that holds the site; `saved` are the temps of the level's
    /// parameters.
    fn dispatch(&mut self, entries: &[usize], saved: &[u32]) {
        for t in saved.iter().rev() {
            self.op(&Instruction::LocalSet(*t));
        }
        for _ in entries {
            self.op(&Instruction::Block(BlockType::Empty));
            self.labels.push(false);
        }
        let lo = self.entry_range(entries[0]).0;
        self.op(&Instruction::GlobalGet(self.g.state));
        self.op(&Instruction::I32Const(REWINDING));
        self.op(&Instruction::I32Eq);
        self.op(&Instruction::If(BlockType::Empty));
        let ifs: Vec<(u32, u32)> = entries
            .iter()
            .filter_map(|e| self.plan.constructs.get(e))
            .filter(|c| c.is_if)
            .map(|c| (c.lo, c.then_hi))
            .collect();
        if !ifs.is_empty() {
            // The condition an `if` entry is entered with: whether the site is on
            // its `then` side.
            self.op(&Instruction::I32Const(0));
            for (lo, then_hi) in ifs {
                self.op(&Instruction::GlobalGet(self.g.site));
                self.op(&Instruction::I32Const(lo as i32));
                self.op(&Instruction::I32Sub);
                self.op(&Instruction::I32Const((then_hi - lo) as i32));
                self.op(&Instruction::I32LtU);
                self.op(&Instruction::I32Or);
            }
            self.op(&Instruction::LocalSet(self.cond_local));
        }
        // From inside the `if`, landing j is `j + 1` labels out.
        let mut table = Vec::new();
        for (j, e) in entries.iter().enumerate() {
            let (a, b) = self.entry_range(*e);
            table.extend(std::iter::repeat_n(j as u32 + 1, (b - a) as usize));
        }
        let last = table.last().copied().unwrap_or(1);
        self.op(&Instruction::GlobalGet(self.g.site));
        self.op(&Instruction::I32Const(lo as i32));
        self.op(&Instruction::I32Sub);
        self.op(&Instruction::BrTable(table.into(), last));
        self.op(&Instruction::End);
        for t in saved {
            self.op(&Instruction::LocalGet(*t));
        }
    }

    /// Before entry operator `i` of the current level: moves the level's operand stack
    /// to temps and, when the level dispatches, lands.
    fn enter(&mut self, i: usize) -> Entered {
        let stack = self.entry_stack(i);
        let (n_keep, is_if) = match self.plan.sites.get(&i) {
            Some(&s) => (self.plan.site_info[s as usize].below.len(), false),
            None => self
                .plan
                .constructs
                .get(&i)
                .map_or((0, false), |c| (c.kept(), c.is_if)),
        };
        let values = &stack[..stack.len() - usize::from(is_if)];
        let before = self.temps.mark();
        let mut temps = Vec::with_capacity(values.len());
        let mut after_below = before.clone();
        for (k, ty) in values.iter().enumerate() {
            if k == n_keep {
                after_below = self.temps.mark();
            }
            temps.push((self.temps.take(*ty), *ty));
        }
        if values.len() == n_keep {
            after_below = self.temps.mark();
        }
        if is_if {
            self.op(&Instruction::LocalSet(self.cond_local));
        }
        for (t, _) in temps.iter().rev() {
            self.op(&Instruction::LocalSet(*t));
        }
        if let Some(l) = self.levels.last_mut() {
            l.next += 1;
        }
        if self.resume && self.levels.last().is_some_and(|l| l.dispatch) {
            self.op(&Instruction::End);
            self.labels.pop();
        }
        Entered {
            temps,
            before,
            after_below,
        }
    }

    /// Writes the body of the function.
    fn body(&mut self, ops: &[Operator<'_>], live_after: &[Vec<u32>]) -> Result<(), SnapshotError> {
        self.labels.push(true);
        self.open_level(FUNCTION, 0, &[], None);
        // For each open `if`, its parameter types (for its `else` side).
        let mut if_params: Vec<Vec<ValType>> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let is_entry = self
                .levels
                .last()
                .is_some_and(|l| l.entries.get(l.next) == Some(&i));
            let entered = is_entry.then(|| self.enter(i));
            match *op {
                Operator::Block { blockty }
                | Operator::Loop { blockty }
                | Operator::If { blockty } => {
                    let bt = RoundtripReencoder
                        .block_type(blockty)
                        .map_err(|e| refuse(format!("unsupported block type: {e}")))?;
                    let instruction = match op {
                        Operator::Block { .. } => Instruction::Block(bt),
                        Operator::Loop { .. } => Instruction::Loop(bt),
                        _ => Instruction::If(bt),
                    };
                    let (params, _) = self.block_sig(blockty)?;
                    if matches!(op, Operator::If { .. }) {
                        if_params.push(params.clone());
                    } else {
                        if_params.push(Vec::new());
                    }
                    let construct = self
                        .plan
                        .constructs
                        .get(&i)
                        .map(|c| (c.kept(), c.is_if, c.results.clone()));
                    match (entered, construct) {
                        (Some(e), Some((n_keep, is_if, results))) => {
                            for (t, _) in &e.temps[n_keep..] {
                                self.op(&Instruction::LocalGet(*t));
                            }
                            if is_if {
                                self.op(&Instruction::LocalGet(self.cond_local));
                            }
                            self.temps.reset(e.after_below);
                            let below = e.temps[..n_keep].to_vec();
                            self.pinned.extend(below.iter().copied());
                            self.op(&instruction);
                            self.labels.push(true);
                            self.open_level(i, i + 1, &params, Some((below, e.before, results)));
                        }
                        _ => {
                            self.op(&instruction);
                            self.labels.push(true);
                            self.open_level(i, i + 1, &params, None);
                        }
                    }
                }
                Operator::Else => {
                    let entry = self.levels.pop().and_then(|l| l.entry);
                    self.op(&Instruction::Else);
                    let params = if_params.last().cloned().unwrap_or_default();
                    self.open_level(i, i + 1, &params, entry);
                }
                Operator::End => {
                    let level = self.levels.pop();
                    self.op(&Instruction::End);
                    if self.levels.is_empty() {
                        // The function's own end.
                        break;
                    }
                    if_params.pop();
                    self.labels.pop();
                    if let Some((below, mark, results)) = level.and_then(|l| l.entry) {
                        let stashed: Vec<u32> =
                            results.iter().map(|t| self.temps.take(*t)).collect();
                        if !below.is_empty() {
                            for t in stashed.iter().rev() {
                                self.op(&Instruction::LocalSet(*t));
                            }
                            for (t, _) in &below {
                                self.op(&Instruction::LocalGet(*t));
                            }
                            for t in &stashed {
                                self.op(&Instruction::LocalGet(*t));
                            }
                        }
                        self.temps.reset(mark);
                        let keep = self.pinned.len() - below.len();
                        self.pinned.truncate(keep);
                    }
                }
                Operator::Call { .. } | Operator::CallIndirect { .. } if entered.is_some() => {
                    if let Some(e) = entered {
                        self.site(i, op, e, live_after)?;
                    }
                }
                Operator::Br { relative_depth } => {
                    self.op(&Instruction::Br(self.depth(relative_depth)));
                }
                Operator::BrIf { relative_depth } => {
                    self.op(&Instruction::BrIf(self.depth(relative_depth)));
                }
                Operator::BrTable { ref targets } => {
                    let mut list = Vec::with_capacity(targets.len() as usize);
                    for t in targets.targets() {
                        list.push(self.depth(t.map_err(|e| refuse(e.to_string()))?));
                    }
                    let default = self.depth(targets.default());
                    self.op(&Instruction::BrTable(list.into(), default));
                }
                Operator::BrOnNull { .. }
                | Operator::BrOnNonNull { .. }
                | Operator::BrOnCast { .. }
                | Operator::BrOnCastFail { .. } => {
                    return Err(refuse(
                        "a function that can reach a safe point uses br_on_* branches",
                    ));
                }
                ref other => {
                    let instruction = RoundtripReencoder
                        .instruction(other.clone())
                        .map_err(|e| refuse(format!("cannot re-encode: {e}")))?;
                    self.op(&instruction);
                }
            }
        }
        Ok(())
    }

    /// Writes site operator `i`: its call with its arguments back from temps, the
    /// unwind check after it, and the level's values back under its results.
    fn site(
        &mut self,
        i: usize,
        op: &Operator<'_>,
        e: Entered,
        live_after: &[Vec<u32>],
    ) -> Result<(), SnapshotError> {
        let s = self.plan.sites[&i];
        let (n_below, indirect, results) = {
            let site = &self.plan.site_info[s as usize];
            (site.below.len(), site.indirect, site.results.clone())
        };
        for (t, _) in &e.temps[n_below..] {
            self.op(&Instruction::LocalGet(*t));
        }
        let call = RoundtripReencoder
            .instruction(op.clone())
            .map_err(|e| refuse(format!("cannot re-encode: {e}")))?;
        self.op(&call);

        // What this site's record holds.
        let mut record: Vec<(u32, ValType)> = live_after
            .get(s as usize)
            .into_iter()
            .flatten()
            .map(|&l| (l, self.local_types[l as usize]))
            .collect();
        record.extend(e.temps[..n_below].iter().copied());
        record.extend(self.pinned.iter().copied());
        if indirect && let Some(index) = e.temps.last() {
            // A rewind calls through the table again: the index must come back.
            record.push(*index);
        }
        record.sort_unstable_by_key(|(l, _)| *l);
        record.dedup_by_key(|(l, _)| *l);
        let record = Record::of(&record)?;
        let size = record.size;

        self.op(&Instruction::GlobalGet(self.g.state));
        self.op(&Instruction::I32Const(UNWINDING));
        self.op(&Instruction::I32Eq);
        self.op(&Instruction::If(BlockType::Empty));
        // ptr = data.current; a record past data.end traps.
        self.op(&Instruction::GlobalGet(self.g.data));
        self.op(&Instruction::I32Load(memarg(0)));
        self.op(&Instruction::LocalTee(self.ptr_local));
        self.op(&Instruction::I32Const((size + 4) as i32));
        self.op(&Instruction::I32Add);
        self.op(&Instruction::GlobalGet(self.g.data));
        self.op(&Instruction::I32Load(memarg(4)));
        self.op(&Instruction::I32GtU);
        self.op(&Instruction::If(BlockType::Empty));
        self.op(&Instruction::Unreachable);
        self.op(&Instruction::End);
        for (l, ty, o) in &record.slots {
            self.op(&Instruction::LocalGet(self.ptr_local));
            self.op(&Instruction::LocalGet(*l));
            self.op(&store_value(*ty, memarg(*o)));
        }
        self.op(&Instruction::LocalGet(self.ptr_local));
        self.op(&Instruction::I32Const(s as i32));
        self.op(&Instruction::I32Store(memarg(size)));
        self.op(&Instruction::GlobalGet(self.g.data));
        self.op(&Instruction::LocalGet(self.ptr_local));
        self.op(&Instruction::I32Const((size + 4) as i32));
        self.op(&Instruction::I32Add);
        self.op(&Instruction::I32Store(memarg(0)));
        let (_, own_results) = self.sig(self.m.func_types[self.index as usize]);
        for ty in own_results {
            self.op(&zero(ty));
        }
        self.op(&Instruction::Return);
        self.op(&Instruction::End);
        if self.records.len() <= s as usize {
            self.records.resize(s as usize + 1, Record::default());
        }
        self.records[s as usize] = record;

        if n_below > 0 {
            let stashed: Vec<u32> = results.iter().map(|t| self.temps.take(*t)).collect();
            for t in stashed.iter().rev() {
                self.op(&Instruction::LocalSet(*t));
            }
            for (t, _) in &e.temps[..n_below] {
                self.op(&Instruction::LocalGet(*t));
            }
            for t in &stashed {
                self.op(&Instruction::LocalGet(*t));
            }
        }
        self.temps.reset(e.before);
        Ok(())
    }

    /// The function's start: on a rewind, pops this frame's record and restores the
    /// locals it holds.
    fn prologue(&mut self) {
        let n = self.records.len() as u32;
        if n == 0 {
            return;
        }
        self.op(&Instruction::GlobalGet(self.g.state));
        self.op(&Instruction::I32Const(REWINDING));
        self.op(&Instruction::I32Eq);
        self.op(&Instruction::If(BlockType::Empty));
        self.op(&Instruction::GlobalGet(self.g.data));
        self.op(&Instruction::I32Load(memarg(0)));
        self.op(&Instruction::I32Const(4));
        self.op(&Instruction::I32Sub);
        self.op(&Instruction::LocalTee(self.ptr_local));
        self.op(&Instruction::I32Load(memarg(0)));
        self.op(&Instruction::GlobalSet(self.g.site));
        self.op(&Instruction::Block(BlockType::Empty)); // $out
        for _ in 0..n {
            self.op(&Instruction::Block(BlockType::Empty));
        }
        self.op(&Instruction::Block(BlockType::Empty)); // $bad: not a site of this function
        self.op(&Instruction::GlobalGet(self.g.site));
        let table: Vec<u32> = (1..=n).collect();
        self.op(&Instruction::BrTable(table.into(), 0));
        self.op(&Instruction::End);
        self.op(&Instruction::Unreachable);
        let records = std::mem::take(&mut self.records);
        for (k, record) in records.iter().enumerate() {
            self.op(&Instruction::End);
            self.op(&Instruction::LocalGet(self.ptr_local));
            self.op(&Instruction::I32Const(record.size as i32));
            self.op(&Instruction::I32Sub);
            self.op(&Instruction::LocalSet(self.ptr_local));
            for (l, ty, offset) in &record.slots {
                self.op(&Instruction::LocalGet(self.ptr_local));
                self.op(&load_value(*ty, memarg(*offset)));
                self.op(&Instruction::LocalSet(*l));
            }
            self.op(&Instruction::Br(n - 1 - k as u32));
        }
        self.op(&Instruction::End); // $out
        self.op(&Instruction::GlobalGet(self.g.data));
        self.op(&Instruction::LocalGet(self.ptr_local));
        self.op(&Instruction::I32Store(memarg(0)));
        self.op(&Instruction::End);
    }
}

/// Re-encodes the module with the rewritten bodies, the pass's three globals (state,
/// data address, site a rewind is headed for) and its five exports.
fn assemble(
    wasm: &[u8],
    m: &Scan,
    g: Globals,
    bodies: HashMap<u32, Vec<u8>>,
    clones: Vec<(u32, Vec<u8>)>,
) -> Result<Vec<u8>, SnapshotError> {
    let mut a = Assembler {
        bodies,
        n_types: m.types.len() as u32,
        n_funcs: (m.func_types.len() + clones.len()) as u32,
        clones,
        g,
        globals_written: m.has_globals,
        next_body: 0,
    };
    let mut module = Module::new();
    a.parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| refuse(format!("cannot re-encode: {e}")))?;
    let out = module.finish();
    Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .map_err(|e| {
            refuse(format!(
                "the unwindable module is invalid (a Tern bug): {e}"
            ))
        })?;
    Ok(out)
}

struct Assembler {
    bodies: HashMap<u32, Vec<u8>>,
    n_types: u32,
    /// Functions before the five exports: the module's and the resume clones.
    n_funcs: u32,
    /// Type index and body of each resume clone.
    clones: Vec<(u32, Vec<u8>)>,
    g: Globals,
    globals_written: bool,
    next_body: u32,
}

impl Assembler {
    /// Types of the five exports: `[i32] -> []`, `[] -> []`, `[] -> [i32]`.
    fn export_types(&self) -> [u32; 5] {
        let (set, none, get) = (self.n_types, self.n_types + 1, self.n_types + 2);
        [set, none, set, none, get]
    }

    fn globals(&mut self, section: &mut GlobalSection) {
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

    fn export_body(&self, k: usize) -> Function {
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
