//! Tern's loop vectoriser: a pass over a guest's Wasm, before compilation, that runs
//! the innermost floating-point loops of scalar code on 128-bit vectors: `f64` loops two
//! iterations at a time with `f64x2`, `f32` loops four at a time with `f32x4`.
//!
//! Native compilers vectorise loops like a stencil's or a matrix product's; a guest
//! built without `-msimd128` cannot, and Cranelift compiles each iteration as written.
//! This pass finds innermost loops whose body is straight-line code over values of one
//! float type in memory:
//!
//! ```text
//! loop                              ;; no block, branch, call or global inside
//!   local.set/tee of i32 addresses (affine in the loop's counters) and float values
//!   f64/f32 load and store at those addresses; add sub mul div min max neg abs sqrt
//!   ceil floor trunc nearest
//!   br_if 0 (counter + step) [!= bound]        ;; the loop's only exit test
//! end
//! ```
//!
//! and puts a vector version in front of it:
//!
//! ```text
//! block
//!   n = the trip count, from the exit test (else: to the original loop)
//!   every address the n iterations touch is in bounds, and what they store overlaps
//!   nothing they load or store elsewhere (else: to the original loop)
//!   loop (n - 1) / L times: iterations i … i + L - 1 as the L lanes of vector values
//! end
//! the original loop, which runs the last 1 … L iterations (or all of them)
//! ```
//!
//! A body that clang already unrolled by two (two stores to consecutive elements with
//! values of the same shape) has its two halves paired as the lanes instead
//! ([`Lanes::Statements`]: an `f64x2`, or the low half of an `f32x4`, loaded and stored
//! eight bytes at a time), and the vector loop runs all iterations but the last.
//!
//! Each lane computes what its scalar iteration computed: the same operations on the
//! same operands in the same order, so results are bit for bit the same (but for which
//! NaN a NaN result carries, which Wasm leaves to the engine: when pairing halves, the
//! operands of `+`, `×`, min and max may be swapped). Loads and stores may be reordered
//! across lanes only because the checks before the loop show that no store touches what
//! another access reads or writes (a load of the very element the same iteration then
//! stores, as in `c[j] = c[j] + …`, is allowed), and no access can trap because every one
//! is in bounds; when a check fails, the original loop runs alone. A value one iteration
//! leaves in a local for the next (a stencil's `a[j+1]` reused as the next `a[j]`) is
//! carried between lanes with a shuffle, not re-read. Locals the body only uses as
//! temporaries are set again by the original loop, which always runs at least once
//! after the vector loop, so code after the loop sees every local as before.
//!
//! No crate does this for Wasm: Binaryen has no loop vectoriser and Cranelift compiles
//! scalar code as scalar. The pass leaves a module alone when it finds no such loop,
//! when the module does not validate or has other than one 32-bit unshared memory.
//! `tern_runtime::EngineOptions::vectorize` turns it off.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{CodeSection, Function, Instruction, MemArg, ValType};
use wasmparser::{BlockType, FunctionBody, Operator, Parser};

mod analyse;
use analyse::*;
mod emit;
use emit::*;
#[cfg(test)]
mod tests;

/// What identifies the pass: its source, hashed into the engine fingerprint.
pub const IDENTITY: &str = concat!(
    include_str!("mod.rs"),
    include_str!("analyse.rs"),
    include_str!("emit.rs")
);

/// The custom section the pass leaves in its output, so that it never runs twice.
const MARK: &str = "tern:vectorized-loops";

/// The element type of a loop's values: one per loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    F32,
    F64,
}

impl Elem {
    /// `f32` or `f64`, whichever this element is.
    fn pick<T>(self, f32: T, f64: T) -> T {
        match self {
            Elem::F32 => f32,
            Elem::F64 => f64,
        }
    }

    /// Its width, and the stride of a loop's accesses that fill one `v128`.
    fn bytes(self) -> u32 {
        self.pick(4, 8)
    }

    /// How many fit in a `v128`.
    fn lanes(self) -> u32 {
        16 / self.bytes()
    }

    fn val_type(self) -> ValType {
        self.pick(ValType::F32, ValType::F64)
    }

    fn load(self, m: MemArg) -> Instruction<'static> {
        self.pick(Instruction::F32Load(m), Instruction::F64Load(m))
    }

    fn store(self, m: MemArg) -> Instruction<'static> {
        self.pick(Instruction::F32Store(m), Instruction::F64Store(m))
    }

    /// Loads one element into every lane.
    fn load_splat(self, m: MemArg) -> Instruction<'static> {
        self.pick(
            Instruction::V128Load32Splat(m),
            Instruction::V128Load64Splat(m),
        )
    }

    fn splat(self) -> Instruction<'static> {
        self.pick(Instruction::F32x4Splat, Instruction::F64x2Splat)
    }

    fn extract(self, lane: u8) -> Instruction<'static> {
        self.pick(
            Instruction::F32x4ExtractLane(lane),
            Instruction::F64x2ExtractLane(lane),
        )
    }

    fn replace(self, lane: u8) -> Instruction<'static> {
        self.pick(
            Instruction::F32x4ReplaceLane(lane),
            Instruction::F64x2ReplaceLane(lane),
        )
    }

    /// A scalar constant from its bits.
    fn constant(self, bits: u64) -> Instruction<'static> {
        self.pick(
            Instruction::F32Const(f32::from_bits(bits as u32).into()),
            Instruction::F64Const(f64::from_bits(bits).into()),
        )
    }

    /// Loads two consecutive elements into lanes 0 and 1 (an `f32` pair fills half a
    /// vector, the other lanes zero, and reads exactly its 8 bytes).
    fn load_pair(self, m: MemArg) -> Instruction<'static> {
        self.pick(Instruction::V128Load64Zero(m), Instruction::V128Load(m))
    }

    /// Stores lanes 0 and 1 as two consecutive elements, and nothing else.
    fn store_pair(self, m: MemArg) -> Instruction<'static> {
        self.pick(
            Instruction::V128Store64Lane { memarg: m, lane: 0 },
            Instruction::V128Store(m),
        )
    }

    /// A vector with `bits` in every lane.
    fn splat_constant(self, bits: u64) -> Instruction<'static> {
        let mut v = 0u128;
        for lane in 0..self.lanes() {
            v |= u128::from(bits) << (lane * self.bytes() * 8);
        }
        Instruction::V128Const(v as i128)
    }

    fn un(self, o: UnOp, vector: bool) -> Instruction<'static> {
        use Instruction as I;
        match (self, vector, o) {
            (Elem::F64, true, UnOp::Neg) => I::F64x2Neg,
            (Elem::F64, true, UnOp::Abs) => I::F64x2Abs,
            (Elem::F64, true, UnOp::Sqrt) => I::F64x2Sqrt,
            (Elem::F64, true, UnOp::Ceil) => I::F64x2Ceil,
            (Elem::F64, true, UnOp::Floor) => I::F64x2Floor,
            (Elem::F64, true, UnOp::Trunc) => I::F64x2Trunc,
            (Elem::F64, true, UnOp::Nearest) => I::F64x2Nearest,
            (Elem::F32, true, UnOp::Neg) => I::F32x4Neg,
            (Elem::F32, true, UnOp::Abs) => I::F32x4Abs,
            (Elem::F32, true, UnOp::Sqrt) => I::F32x4Sqrt,
            (Elem::F32, true, UnOp::Ceil) => I::F32x4Ceil,
            (Elem::F32, true, UnOp::Floor) => I::F32x4Floor,
            (Elem::F32, true, UnOp::Trunc) => I::F32x4Trunc,
            (Elem::F32, true, UnOp::Nearest) => I::F32x4Nearest,
            (Elem::F64, false, UnOp::Neg) => I::F64Neg,
            (Elem::F64, false, UnOp::Abs) => I::F64Abs,
            (Elem::F64, false, UnOp::Sqrt) => I::F64Sqrt,
            (Elem::F64, false, UnOp::Ceil) => I::F64Ceil,
            (Elem::F64, false, UnOp::Floor) => I::F64Floor,
            (Elem::F64, false, UnOp::Trunc) => I::F64Trunc,
            (Elem::F64, false, UnOp::Nearest) => I::F64Nearest,
            (Elem::F32, false, UnOp::Neg) => I::F32Neg,
            (Elem::F32, false, UnOp::Abs) => I::F32Abs,
            (Elem::F32, false, UnOp::Sqrt) => I::F32Sqrt,
            (Elem::F32, false, UnOp::Ceil) => I::F32Ceil,
            (Elem::F32, false, UnOp::Floor) => I::F32Floor,
            (Elem::F32, false, UnOp::Trunc) => I::F32Trunc,
            (Elem::F32, false, UnOp::Nearest) => I::F32Nearest,
        }
    }

    fn bin(self, o: BinOp, vector: bool) -> Instruction<'static> {
        use Instruction as I;
        match (self, vector, o) {
            (Elem::F64, true, BinOp::Add) => I::F64x2Add,
            (Elem::F64, true, BinOp::Sub) => I::F64x2Sub,
            (Elem::F64, true, BinOp::Mul) => I::F64x2Mul,
            (Elem::F64, true, BinOp::Div) => I::F64x2Div,
            (Elem::F64, true, BinOp::Min) => I::F64x2Min,
            (Elem::F64, true, BinOp::Max) => I::F64x2Max,
            (Elem::F32, true, BinOp::Add) => I::F32x4Add,
            (Elem::F32, true, BinOp::Sub) => I::F32x4Sub,
            (Elem::F32, true, BinOp::Mul) => I::F32x4Mul,
            (Elem::F32, true, BinOp::Div) => I::F32x4Div,
            (Elem::F32, true, BinOp::Min) => I::F32x4Min,
            (Elem::F32, true, BinOp::Max) => I::F32x4Max,
            (Elem::F64, false, BinOp::Add) => I::F64Add,
            (Elem::F64, false, BinOp::Sub) => I::F64Sub,
            (Elem::F64, false, BinOp::Mul) => I::F64Mul,
            (Elem::F64, false, BinOp::Div) => I::F64Div,
            (Elem::F64, false, BinOp::Min) => I::F64Min,
            (Elem::F64, false, BinOp::Max) => I::F64Max,
            (Elem::F32, false, BinOp::Add) => I::F32Add,
            (Elem::F32, false, BinOp::Sub) => I::F32Sub,
            (Elem::F32, false, BinOp::Mul) => I::F32Mul,
            (Elem::F32, false, BinOp::Div) => I::F32Div,
            (Elem::F32, false, BinOp::Min) => I::F32Min,
            (Elem::F32, false, BinOp::Max) => I::F32Max,
        }
    }
}

/// A floating-point operator of a loop body, whichever its element type.
enum FloatOp {
    Const(u64),
    Load(u64),
    Store(u64),
    Un(UnOp),
    Bin(BinOp),
}

/// The element type and meaning of `op`, when it is a floating-point operator the pass
/// takes (on memory 0, not atomic).
fn float_op(op: &Operator<'_>) -> Option<(Elem, FloatOp)> {
    use FloatOp as F;
    use Operator as O;
    let plain = |m: &wasmparser::MemArg| {
        (m.target == wasmparser::MemArgTarget::Memory(0) && m.ordering.is_none())
            .then_some(m.offset)
    };
    Some(match op {
        O::F64Const { value } => (Elem::F64, F::Const(value.bits())),
        O::F32Const { value } => (Elem::F32, F::Const(u64::from(value.bits()))),
        O::F64Load { memarg } => (Elem::F64, F::Load(plain(memarg)?)),
        O::F32Load { memarg } => (Elem::F32, F::Load(plain(memarg)?)),
        O::F64Store { memarg } => (Elem::F64, F::Store(plain(memarg)?)),
        O::F32Store { memarg } => (Elem::F32, F::Store(plain(memarg)?)),
        O::F64Neg => (Elem::F64, F::Un(UnOp::Neg)),
        O::F64Abs => (Elem::F64, F::Un(UnOp::Abs)),
        O::F64Sqrt => (Elem::F64, F::Un(UnOp::Sqrt)),
        O::F64Ceil => (Elem::F64, F::Un(UnOp::Ceil)),
        O::F64Floor => (Elem::F64, F::Un(UnOp::Floor)),
        O::F64Trunc => (Elem::F64, F::Un(UnOp::Trunc)),
        O::F64Nearest => (Elem::F64, F::Un(UnOp::Nearest)),
        O::F32Neg => (Elem::F32, F::Un(UnOp::Neg)),
        O::F32Abs => (Elem::F32, F::Un(UnOp::Abs)),
        O::F32Sqrt => (Elem::F32, F::Un(UnOp::Sqrt)),
        O::F32Ceil => (Elem::F32, F::Un(UnOp::Ceil)),
        O::F32Floor => (Elem::F32, F::Un(UnOp::Floor)),
        O::F32Trunc => (Elem::F32, F::Un(UnOp::Trunc)),
        O::F32Nearest => (Elem::F32, F::Un(UnOp::Nearest)),
        O::F64Add => (Elem::F64, F::Bin(BinOp::Add)),
        O::F64Sub => (Elem::F64, F::Bin(BinOp::Sub)),
        O::F64Mul => (Elem::F64, F::Bin(BinOp::Mul)),
        O::F64Div => (Elem::F64, F::Bin(BinOp::Div)),
        O::F64Min => (Elem::F64, F::Bin(BinOp::Min)),
        O::F64Max => (Elem::F64, F::Bin(BinOp::Max)),
        O::F32Add => (Elem::F32, F::Bin(BinOp::Add)),
        O::F32Sub => (Elem::F32, F::Bin(BinOp::Sub)),
        O::F32Mul => (Elem::F32, F::Bin(BinOp::Mul)),
        O::F32Div => (Elem::F32, F::Bin(BinOp::Div)),
        O::F32Min => (Elem::F32, F::Bin(BinOp::Min)),
        O::F32Max => (Elem::F32, F::Bin(BinOp::Max)),
        _ => return None,
    })
}

/// The longest loop body, in operators, the pass reads: its trees are walked
/// recursively, and the loops worth vectorising are short.
const MAX_BODY: usize = 400;

/// Returns `wasm` with its vectorisable loops given a vector version, or `wasm` itself
/// when it has none.
pub fn apply(wasm: &[u8]) -> Cow<'_, [u8]> {
    match vectorise(wasm) {
        Some((out, loops)) => {
            tracing::debug!(loops, "loops given a vector version");
            Cow::Owned(out)
        }
        None => Cow::Borrowed(wasm),
    }
}

/// The rewritten module and how many loops got a vector version, or `None` when none
/// did (or the module is not one the pass takes).
fn vectorise(wasm: &[u8]) -> Option<(Vec<u8>, usize)> {
    let outline = crate::outline::outline(wasm, MARK)?;
    wasmparser::Validator::new().validate_all(wasm).ok()?;
    let mut pass = Pass {
        outline: &outline,
        next_func: outline.imported_funcs,
        loops: 0,
    };
    let mut module = wasm_encoder::Module::new();
    if let Err(e) = pass.parse_core_module(&mut module, Parser::new(0), wasm) {
        tracing::debug!(error = %e, "loops left as they are");
        return None;
    }
    if pass.loops == 0 {
        return None;
    }
    module.section(&wasm_encoder::CustomSection {
        name: MARK.into(),
        data: Cow::Borrowed(&[]),
    });
    let out = module.finish();
    // The output is checked like the input: a pass bug must not become a guest's error.
    if let Err(e) = wasmparser::Validator::new().validate_all(&out) {
        tracing::warn!(error = %e, "vectorised module does not validate; loops left as they are");
        return None;
    }
    Some((out, pass.loops))
}

struct Pass<'a> {
    outline: &'a crate::outline::ModuleOutline,
    /// Index of the function whose body the code section reader gives next.
    next_func: u32,
    /// How many loops were given a vector version.
    loops: usize,
}

impl Reencode for Pass<'_> {
    type Error = Infallible;

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        for body in section {
            let body = body?;
            let func = self.next_func;
            self.next_func += 1;
            let params = self.outline.params(func).unwrap_or_default();
            match rewrite_body(&body, params) {
                Some((f, loops)) => {
                    self.loops += loops;
                    code.function(&f);
                }
                None => {
                    code.raw(body.as_bytes());
                }
            }
        }
        Ok(())
    }
}

/// The body with a vector version in front of each loop that has one, and how many
/// loops got one; `None` when none did.
fn rewrite_body(
    body: &FunctionBody<'_>,
    params: &[wasmparser::ValType],
) -> Option<(Function, usize)> {
    let mut types: Vec<wasmparser::ValType> = params.to_vec();
    let mut declared = Vec::new();
    for group in body.get_locals_reader().ok()? {
        let (n, ty) = group.ok()?;
        declared.push((n, ty));
        types.extend(std::iter::repeat_n(ty, n as usize));
    }
    let mut reader = body.get_operators_reader().ok()?;
    let start = usize::try_from(body.range().start).ok()?;
    let code_start = body.as_bytes().len() - reader.get_binary_reader().bytes_remaining();
    let mut ops = Vec::new();
    while !reader.eof() {
        let (op, offset) = reader.read_with_offset().ok()?;
        ops.push((op, usize::try_from(offset).ok()?.checked_sub(start)?));
    }
    let plans: Vec<(usize, LoopPlan)> = innermost_loops(&ops)
        .into_iter()
        .filter_map(|(open, close)| {
            let plan = analyse(&ops[open + 1..close - 1], &ops[close - 1].0, &types)?;
            Some((ops[open].1, plan))
        })
        .collect();
    if plans.is_empty() {
        return None;
    }
    let mut locals: Vec<(u32, ValType)> = declared
        .iter()
        .map(|&(n, ty)| Some((n, reencode::RoundtripReencoder.val_type(ty).ok()?)))
        .collect::<Option<_>>()?;
    let mut next = u32::try_from(types.len()).ok()?;
    let mut f_parts = Vec::new();
    for (offset, plan) in &plans {
        let mut alloc = Locals {
            next,
            new: Vec::new(),
        };
        let mut code = Function::new([]);
        emit(&mut code, plan, &mut alloc);
        next = alloc.next;
        locals.extend(alloc.new);
        f_parts.push((*offset, code));
    }
    let mut f = Function::new(locals);
    let bytes = body.as_bytes();
    let mut from = code_start;
    for (offset, part) in f_parts {
        f.raw(bytes[from..offset].iter().copied());
        // `Function::new([])` encodes an empty locals vector, one byte, before the code.
        f.raw(part.into_raw_body()[1..].iter().copied());
        from = offset;
    }
    f.raw(bytes[from..].iter().copied());
    Some((f, plans.len()))
}

/// The `(loop, end)` operator indices of every innermost loop of the form
/// `loop (no control flow) br_if 0 end`, without parameters or results.
fn innermost_loops(ops: &[(Operator<'_>, usize)]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut open = None;
    for (i, (op, _)) in ops.iter().enumerate() {
        match op {
            Operator::Loop {
                blockty: BlockType::Empty,
            } => open = Some(i),
            Operator::End => {
                if let Some(o) = open.take() {
                    let brif = matches!(ops[i - 1].0, Operator::BrIf { relative_depth: 0 });
                    if brif && i >= o + 2 {
                        found.push((o, i));
                    }
                }
            }
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Else
            | Operator::Br { .. }
            | Operator::BrTable { .. }
            | Operator::Return
            | Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::Unreachable => open = None,
            // Only the last operator of the body may branch, and only back to the loop.
            Operator::BrIf { relative_depth }
                if *relative_depth != 0 || !matches!(ops.get(i + 1), Some((Operator::End, _))) =>
            {
                open = None;
            }
            _ => {}
        }
    }
    found
}

/// An `i32` value as `k + Σ coefficient × local`, the locals taken at the start of an
/// iteration, all arithmetic modulo 2³² as Wasm's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Affine {
    terms: BTreeMap<u32, u32>,
    k: u32,
}

impl Affine {
    fn konst(k: u32) -> Affine {
        Affine {
            terms: BTreeMap::new(),
            k,
        }
    }

    fn local(x: u32) -> Affine {
        Affine {
            terms: BTreeMap::from([(x, 1)]),
            k: 0,
        }
    }

    fn add(&self, other: &Affine) -> Affine {
        let mut sum = self.clone();
        sum.k = sum.k.wrapping_add(other.k);
        for (&x, &c) in &other.terms {
            let e = sum.terms.entry(x).or_insert(0);
            *e = e.wrapping_add(c);
            if *e == 0 {
                sum.terms.remove(&x);
            }
        }
        sum
    }

    fn scale(&self, c: u32) -> Affine {
        Affine {
            terms: self
                .terms
                .iter()
                .map(|(&x, &t)| (x, t.wrapping_mul(c)))
                .filter(|&(_, t)| t != 0)
                .collect(),
            k: self.k.wrapping_mul(c),
        }
    }

    fn constant(&self) -> Option<u32> {
        self.terms.is_empty().then_some(self.k)
    }

    /// How much the value changes from one iteration to the next.
    fn delta(&self, steps: &BTreeMap<u32, u32>) -> i32 {
        let d = self.terms.iter().fold(0u32, |d, (x, &c)| {
            d.wrapping_add(c.wrapping_mul(steps.get(x).copied().unwrap_or(0)))
        });
        d as i32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum UnOp {
    Neg,
    Abs,
    Sqrt,
    Ceil,
    Floor,
    Trunc,
    Nearest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

/// A float value computed in one iteration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Const(u64),
    /// A local's value at the start of the iteration.
    Param(u32),
    Load(Stream),
    Un(UnOp, usize),
    Bin(BinOp, usize, usize),
}

/// A float access: its address operand and its static offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Stream {
    addr: Affine,
    offset: u64,
}

#[derive(Debug, Clone)]
enum Val {
    I32(Affine),
    /// `a != b`, as `a - b`: only the exit test may use it.
    Ne(Affine),
    /// A float of the loop's element type.
    F(usize),
}

/// A loop the pass can vectorise.
#[derive(Debug)]
struct LoopPlan {
    elem: Elem,
    nodes: Vec<Node>,
    /// The counters: locals that grow by a constant each iteration, and by how much.
    steps: BTreeMap<u32, u32>,
    /// Locals whose float value one iteration leaves for the next, with the node that
    /// computes it (from loads, constants and loop-invariant locals only).
    carried: BTreeMap<u32, usize>,
    /// The stores, in order: their stream and value.
    stores: Vec<(Stream, usize)>,
    /// Every stream loaded.
    loads: BTreeSet<Stream>,
    /// The loop runs again while this is not zero.
    exit: Affine,
    /// What the lanes of a vector are.
    lanes: Lanes,
}

/// What the lanes of the vector loop compute.
#[derive(Debug)]
enum Lanes {
    /// Consecutive iterations of the loop, as many as the vector has lanes: the vector
    /// loop runs that many times fewer.
    Iterations,
    /// Two stores of one iteration to consecutive elements, with their values: a body
    /// the C compiler unrolled by two. Pairs of indices into the stores, the lower
    /// element first; the vector loop runs as many times as the original.
    Statements(Vec<(usize, usize)>),
}
