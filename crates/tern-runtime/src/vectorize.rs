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
//! [`crate::EngineOptions::vectorize`] turns it off.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{CodeSection, Function, Instruction, MemArg, ValType};
use wasmparser::{BlockType, FunctionBody, Operator, Parser};

/// What identifies the pass: its source, hashed into the engine fingerprint.
pub const IDENTITY: &str = include_str!("vectorize.rs");

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
    let scan = crate::scan::scan(wasm, MARK)?;
    wasmparser::Validator::new().validate_all(wasm).ok()?;
    let mut pass = Pass {
        scan: &scan,
        next_func: scan.imported_funcs,
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
    scan: &'a crate::scan::ModuleScan,
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
            let params = self.scan.params(func).unwrap_or_default();
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

/// Reads a loop body (without its `br_if`) into a [`LoopPlan`], or `None` when it is
/// not a loop the pass vectorises.
fn analyse(
    body: &[(Operator<'_>, usize)],
    brif: &Operator<'_>,
    types: &[wasmparser::ValType],
) -> Option<LoopPlan> {
    use wasmparser::ValType as T;
    if !matches!(brif, Operator::BrIf { relative_depth: 0 }) || body.len() > MAX_BODY {
        return None;
    }
    let mut nodes: Vec<Node> = Vec::new();
    let mut index: HashMap<Node, usize> = HashMap::new();
    let mut intern = |n: Node, nodes: &mut Vec<Node>| -> usize {
        *index.entry(n.clone()).or_insert_with(|| {
            nodes.push(n);
            nodes.len() - 1
        })
    };
    let mut env: HashMap<u32, Val> = HashMap::new();
    let mut read_first = BTreeSet::new();
    let mut written = BTreeSet::new();
    let mut stack: Vec<Val> = Vec::new();
    let mut stores: Vec<(Stream, usize)> = Vec::new();
    let mut loads = BTreeSet::new();
    let mut elem: Option<Elem> = None;
    for (op, _) in body {
        match op {
            Operator::LocalGet { local_index: x } => {
                let v = match env.get(x) {
                    Some(v) => v.clone(),
                    None => {
                        read_first.insert(*x);
                        match types.get(*x as usize)? {
                            T::I32 => Val::I32(Affine::local(*x)),
                            T::F64 if *elem.get_or_insert(Elem::F64) == Elem::F64 => {
                                Val::F(intern(Node::Param(*x), &mut nodes))
                            }
                            T::F32 if *elem.get_or_insert(Elem::F32) == Elem::F32 => {
                                Val::F(intern(Node::Param(*x), &mut nodes))
                            }
                            _ => return None,
                        }
                    }
                };
                stack.push(v);
            }
            Operator::LocalSet { local_index: x } | Operator::LocalTee { local_index: x } => {
                let v = stack.pop()?;
                // A float value's type is the loop's element type.
                match (&v, types.get(*x as usize)?) {
                    (Val::I32(_), T::I32) => {}
                    (Val::F(_), T::F64) if elem == Some(Elem::F64) => {}
                    (Val::F(_), T::F32) if elem == Some(Elem::F32) => {}
                    _ => return None,
                }
                if matches!(op, Operator::LocalTee { .. }) {
                    stack.push(v.clone());
                }
                env.insert(*x, v);
                written.insert(*x);
            }
            Operator::I32Const { value } => stack.push(Val::I32(Affine::konst(*value as u32))),
            Operator::I32Add
            | Operator::I32Sub
            | Operator::I32Mul
            | Operator::I32Shl
            | Operator::I32Ne => {
                let (Val::I32(b), Val::I32(a)) = (stack.pop()?, stack.pop()?) else {
                    return None;
                };
                stack.push(match op {
                    Operator::I32Add => Val::I32(a.add(&b)),
                    Operator::I32Sub => Val::I32(a.add(&b.scale(u32::MAX))),
                    Operator::I32Mul => match (a.constant(), b.constant()) {
                        (_, Some(c)) => Val::I32(a.scale(c)),
                        (Some(c), _) => Val::I32(b.scale(c)),
                        _ => return None,
                    },
                    Operator::I32Shl => Val::I32(a.scale(1u32 << (b.constant()? & 31))),
                    _ => Val::Ne(a.add(&b.scale(u32::MAX))),
                });
            }
            op => {
                let (e, fop) = float_op(op)?;
                if *elem.get_or_insert(e) != e {
                    return None;
                }
                let node = match fop {
                    FloatOp::Const(bits) => Node::Const(bits),
                    FloatOp::Load(offset) => {
                        let Val::I32(addr) = stack.pop()? else {
                            return None;
                        };
                        let s = Stream { addr, offset };
                        // A load after a store to the same element reads the stored value.
                        if stores.iter().any(|(t, _)| *t == s) {
                            return None;
                        }
                        loads.insert(s.clone());
                        Node::Load(s)
                    }
                    FloatOp::Store(offset) => {
                        let (Val::F(v), Val::I32(addr)) = (stack.pop()?, stack.pop()?) else {
                            return None;
                        };
                        stores.push((Stream { addr, offset }, v));
                        continue;
                    }
                    FloatOp::Un(u) => {
                        let Val::F(a) = stack.pop()? else {
                            return None;
                        };
                        Node::Un(u, a)
                    }
                    FloatOp::Bin(o) => {
                        let (Val::F(b), Val::F(a)) = (stack.pop()?, stack.pop()?) else {
                            return None;
                        };
                        Node::Bin(o, a, b)
                    }
                };
                stack.push(Val::F(intern(node, &mut nodes)));
            }
        }
    }
    let exit = match stack.pop()? {
        Val::I32(a) | Val::Ne(a) => a,
        Val::F(_) => return None,
    };
    if !stack.is_empty() || stores.is_empty() {
        return None;
    }
    // Classify the locals the body both reads first and writes: counters (i32) or
    // values carried to the next iteration (floats). Anything else is not vectorised.
    let mut steps = BTreeMap::new();
    let mut carried = BTreeMap::new();
    for &x in read_first.intersection(&written) {
        match env.get(&x)? {
            Val::I32(a) => {
                let step = a.add(&Affine::local(x).scale(u32::MAX)).constant()?;
                if step == 0 {
                    return None;
                }
                steps.insert(x, step);
            }
            Val::F(n) => {
                carried.insert(x, *n);
            }
            Val::Ne(_) => return None,
        }
    }
    // A carried value must not depend on another carried value: that is a recurrence
    // the lanes cannot compute side by side. Nodes are numbered operands first.
    let mut recurrent = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        recurrent[i] = match n {
            Node::Param(x) => carried.contains_key(x),
            Node::Const(_) | Node::Load(_) => false,
            Node::Un(_, a) => recurrent[*a],
            Node::Bin(_, a, b) => recurrent[*a] || recurrent[*b],
        };
    }
    if carried.values().any(|&n| recurrent[n]) {
        return None;
    }
    let delta_exit = exit.delta(&steps);
    if delta_exit == 0 {
        return None;
    }
    // Each store must write a new element each iteration, and at least one must write
    // consecutive elements: otherwise two lanes save nothing.
    let elem = elem?;
    let mut contiguous = false;
    for (s, _) in &stores {
        let d = s.addr.delta(&steps);
        if d.unsigned_abs() < elem.bytes() {
            return None;
        }
        contiguous |= d == elem.bytes() as i32;
    }
    let mut plan = LoopPlan {
        elem,
        nodes,
        steps,
        carried,
        stores,
        loads,
        exit,
        lanes: Lanes::Iterations,
    };
    if !contiguous {
        plan.lanes = Lanes::Statements(pair_statements(&plan)?);
    }
    Some(plan)
}

/// Whether stream `b` is the element after stream `a`: the same address operand one
/// element (`elem`'s width) on, or one element more of offset.
fn next_element(a: &Stream, b: &Stream, elem: Elem) -> bool {
    (b.addr == a.addr && b.offset == a.offset.wrapping_add(u64::from(elem.bytes())))
        || (b.offset == a.offset && b.addr == a.addr.add(&Affine::konst(elem.bytes())))
}

/// Where stream `b` starts relative to `a`, when both have the same address operand
/// but for a constant: the distance is the same in every iteration.
fn static_distance(a: &Stream, b: &Stream) -> Option<i64> {
    (a.addr.terms == b.addr.terms).then(|| {
        i64::from(b.addr.k.wrapping_sub(a.addr.k) as i32) + b.offset as i64 - a.offset as i64
    })
}

/// Pairs every store with one to the next element, for [`Lanes::Statements`], or
/// `None` when the body is not two isomorphic halves worth a vector.
///
/// Within an iteration the vector computes both statements' values before storing
/// either, so a store must not touch what the other statement reads after it; across
/// iterations the order stays. Where the two accesses share an address operand the
/// distance is checked here; where they do not, the checks before the loop show that
/// stores and loads do not overlap at all.
fn pair_statements(plan: &LoopPlan) -> Option<Vec<(usize, usize)>> {
    let stores = &plan.stores;
    let mut paired = vec![false; stores.len()];
    let mut pairs = Vec::new();
    for a in 0..stores.len() {
        if paired[a] {
            continue;
        }
        let b = (0..stores.len()).find(|&b| {
            !paired[b] && b != a && next_element(&stores[a].0, &stores[b].0, plan.elem)
        })?;
        paired[a] = true;
        paired[b] = true;
        pairs.push((a, b));
    }
    let mut memo = HashMap::new();
    let mut packs = 0;
    for &(a, b) in &pairs {
        packs += pair_cost(plan, stores[a].1, stores[b].1, &mut memo).0;
    }
    // Each pack costs a scalar computation and a lane insert: a body mostly of packs
    // runs no faster.
    if packs > 2 * pairs.len() as u32 {
        return None;
    }
    for (s, _) in stores {
        for l in &plan.loads {
            if let Some(d) = static_distance(s, l)
                && d != 0
                && d.unsigned_abs() < u64::from(plan.elem.bytes())
            {
                return None;
            }
        }
    }
    Some(pairs)
}

/// How many lanes of the pair `(a, b)` must be computed apart and packed, and whether a
/// commutative operation's operands pair better swapped.
fn pair_cost(
    plan: &LoopPlan,
    a: usize,
    b: usize,
    memo: &mut HashMap<(usize, usize), (u32, bool)>,
) -> (u32, bool) {
    if let Some(&c) = memo.get(&(a, b)) {
        return c;
    }
    let cost = match (&plan.nodes[a], &plan.nodes[b]) {
        (Node::Const(_), Node::Const(_)) => (0, false),
        (Node::Param(x), Node::Param(y)) if x == y && !plan.carried.contains_key(x) => (0, false),
        (Node::Load(s), Node::Load(t)) if next_element(s, t, plan.elem) || s == t => (0, false),
        (Node::Un(o, a0), Node::Un(p, b0)) if o == p => pair_cost(plan, *a0, *b0, memo),
        (Node::Bin(o, a0, a1), Node::Bin(p, b0, b1)) if o == p => {
            let straight = pair_cost(plan, *a0, *b0, memo).0 + pair_cost(plan, *a1, *b1, memo).0;
            let commutes = matches!(o, BinOp::Add | BinOp::Mul | BinOp::Min | BinOp::Max);
            if commutes {
                let swapped = pair_cost(plan, *a0, *b1, memo).0 + pair_cost(plan, *a1, *b0, memo).0;
                if swapped < straight {
                    (swapped, true)
                } else {
                    (straight, false)
                }
            } else {
                (straight, false)
            }
        }
        _ => (1, false),
    };
    memo.insert((a, b), cost);
    cost
}

/// Locals the vector code adds to a function.
struct Locals {
    next: u32,
    new: Vec<(u32, ValType)>,
}

impl Locals {
    fn add(&mut self, ty: ValType) -> u32 {
        self.new.push((1, ty));
        self.next += 1;
        self.next - 1
    }
}

fn mem_arg(offset: u64, elem: Elem) -> MemArg {
    // The alignment hint is the element's: no more than any of these accesses may claim.
    MemArg {
        offset,
        align: elem.bytes().trailing_zeros(),
        target: wasm_encoder::MemArgTarget::Memory(0),
        ordering: None,
    }
}

/// Pushes `a`, computed from the locals' current values.
fn affine(f: &mut Function, a: &Affine) {
    let mut first = true;
    for (&x, &c) in &a.terms {
        f.instruction(&Instruction::LocalGet(x));
        if c != 1 {
            f.instruction(&Instruction::I32Const(c as i32))
                .instruction(&Instruction::I32Mul);
        }
        if !first {
            f.instruction(&Instruction::I32Add);
        }
        first = false;
    }
    if first {
        f.instruction(&Instruction::I32Const(a.k as i32));
    } else if a.k != 0 {
        f.instruction(&Instruction::I32Const(a.k as i32))
            .instruction(&Instruction::I32Add);
    }
}

/// Emits the checks and the vector loop of `plan`, inside a block that falls through to
/// the original loop.
fn emit(f: &mut Function, plan: &LoopPlan, locals: &mut Locals) {
    use Instruction as I;
    let k = locals.add(ValType::I32);
    let mem = locals.add(ValType::I64);
    let by_statements = matches!(plan.lanes, Lanes::Statements(_));
    let (elem, lanes) = (plan.elem, plan.elem.lanes());
    f.instruction(&I::Block(wasm_encoder::BlockType::Empty));

    // The trip count: the exit value is e₀ + i·d at iteration i, and the loop leaves at
    // the first i with zero. Here k = that i, so the loop runs k + 1 times.
    let d = plan.exit.delta(&plan.steps);
    let step = d.unsigned_abs();
    if d > 0 {
        f.instruction(&I::I32Const(0));
        affine(f, &plan.exit);
        f.instruction(&I::I32Sub);
    } else {
        affine(f, &plan.exit);
    }
    f.instruction(&I::LocalTee(k))
        .instruction(&I::I32Const(step as i32))
        .instruction(&I::I32RemU)
        .instruction(&I::BrIf(0))
        .instruction(&I::LocalGet(k))
        .instruction(&I::I32Const(step as i32))
        .instruction(&I::I32DivU)
        .instruction(&I::LocalTee(k))
        .instruction(&I::I32Const(if by_statements { 1 } else { lanes as i32 }))
        .instruction(&I::I32LtU)
        .instruction(&I::BrIf(0));

    // Every stream's bytes over the k + 1 iterations: [lo, hi) in i64, in bounds.
    f.instruction(&I::MemorySize(0))
        .instruction(&I::I64ExtendI32U)
        .instruction(&I::I64Const(16))
        .instruction(&I::I64Shl)
        .instruction(&I::LocalSet(mem));
    let streams: BTreeSet<&Stream> = plan
        .loads
        .iter()
        .chain(plan.stores.iter().map(|(s, _)| s))
        .collect();
    let mut ranges: BTreeMap<&Stream, (u32, u32)> = BTreeMap::new();
    for s in streams {
        let lo = locals.add(ValType::I64);
        let hi = locals.add(ValType::I64);
        let d = s.addr.delta(&plan.steps);
        // first = zext(addr) + offset; last = first + k·d.
        affine(f, &s.addr);
        f.instruction(&I::I64ExtendI32U)
            .instruction(&I::I64Const(s.offset as i64))
            .instruction(&I::I64Add)
            .instruction(&I::LocalTee(lo))
            .instruction(&I::LocalGet(k))
            .instruction(&I::I64ExtendI32U)
            .instruction(&I::I64Const(i64::from(d)))
            .instruction(&I::I64Mul)
            .instruction(&I::I64Add)
            .instruction(&I::LocalSet(hi));
        if d < 0 {
            // Going down: the last access is the lowest; swap. Its address operand must
            // not have gone below 0 (and wrapped), whatever the offset adds.
            f.instruction(&I::LocalGet(lo))
                .instruction(&I::LocalGet(hi))
                .instruction(&I::LocalSet(lo))
                .instruction(&I::LocalSet(hi))
                .instruction(&I::LocalGet(lo))
                .instruction(&I::I64Const(s.offset as i64))
                .instruction(&I::I64LtS)
                .instruction(&I::BrIf(0));
        }
        f.instruction(&I::LocalGet(hi))
            .instruction(&I::I64Const(i64::from(elem.bytes())))
            .instruction(&I::I64Add)
            .instruction(&I::LocalTee(hi))
            .instruction(&I::LocalGet(mem))
            .instruction(&I::I64GtU)
            .instruction(&I::BrIf(0));
        ranges.insert(s, (lo, hi));
    }
    // What a store writes overlaps nothing else the loop touches, except the element
    // its own iteration read before (the same stream).
    let disjoint = |f: &mut Function, a: (u32, u32), b: (u32, u32)| {
        f.instruction(&I::LocalGet(a.1))
            .instruction(&I::LocalGet(b.0))
            .instruction(&I::I64LeU)
            .instruction(&I::LocalGet(b.1))
            .instruction(&I::LocalGet(a.0))
            .instruction(&I::I64LeU)
            .instruction(&I::I32Or)
            .instruction(&I::I32Eqz)
            .instruction(&I::BrIf(0));
    };
    // (Lanes from statements keep the order of iterations: accesses a constant
    // distance apart were checked when the loop was read.)
    let checked =
        |s: &Stream, t: &Stream| s == t || (by_statements && static_distance(s, t).is_some());
    for (i, (s, _)) in plan.stores.iter().enumerate() {
        for l in plan.loads.iter().filter(|l| !checked(s, l)) {
            disjoint(f, ranges[s], ranges[l]);
        }
        for (t, _) in plan.stores[i + 1..].iter().filter(|(t, _)| !checked(s, t)) {
            disjoint(f, ranges[s], ranges[t]);
        }
    }
    if let Lanes::Statements(pairs) = &plan.lanes {
        return by_statement(f, plan, pairs, k, locals);
    }

    // The vector loop: k / lanes times, lanes (i, i + 1, …); the original loop runs the
    // rest, at least one iteration.
    f.instruction(&I::LocalGet(k))
        .instruction(&I::I32Const(lanes.trailing_zeros() as i32))
        .instruction(&I::I32ShrU)
        .instruction(&I::LocalSet(k));
    let mut carried = BTreeMap::new();
    for &x in plan.carried.keys() {
        let prev = locals.add(ValType::V128);
        let cur = locals.add(ValType::V128);
        f.instruction(&I::LocalGet(x))
            .instruction(&elem.splat())
            .instruction(&I::LocalSet(prev));
        carried.insert(x, (prev, cur));
    }
    let mut uses = vec![0u32; plan.nodes.len()];
    let roots: Vec<usize> = plan
        .carried
        .values()
        .copied()
        .chain(plan.stores.iter().map(|&(_, v)| v))
        .collect();
    for &r in &roots {
        count_uses(&plan.nodes, r, &mut uses);
    }
    let mut vec = Vector {
        plan,
        carried: &carried,
        uses: &uses,
        saved: HashMap::new(),
    };
    let scratch = locals.add(ValType::V128);
    f.instruction(&I::Loop(wasm_encoder::BlockType::Empty));
    for (&x, &n) in &plan.carried {
        vec.node(f, n, locals);
        f.instruction(&I::LocalSet(carried[&x].1));
    }
    for (s, v) in &plan.stores {
        let d = s.addr.delta(&plan.steps);
        if d == elem.bytes() as i32 {
            affine(f, &s.addr);
            vec.node(f, *v, locals);
            f.instruction(&I::V128Store(mem_arg(s.offset, elem)));
        } else {
            vec.node(f, *v, locals);
            f.instruction(&I::LocalSet(scratch));
            for lane in 0..lanes as u8 {
                affine(f, &s.addr);
                if lane > 0 {
                    f.instruction(&I::I32Const(d.wrapping_mul(i32::from(lane))))
                        .instruction(&I::I32Add);
                }
                f.instruction(&I::LocalGet(scratch))
                    .instruction(&elem.extract(lane))
                    .instruction(&elem.store(mem_arg(s.offset, elem)));
            }
        }
    }
    for &(prev, cur) in carried.values() {
        f.instruction(&I::LocalGet(cur))
            .instruction(&I::LocalSet(prev));
    }
    next_vector(f, plan, lanes, k);
    // The original loop's first iteration reads what the last lane left.
    for (&x, &(prev, _)) in &carried {
        f.instruction(&I::LocalGet(prev))
            .instruction(&elem.extract(lanes as u8 - 1))
            .instruction(&I::LocalSet(x));
    }
    f.instruction(&I::End);
}

/// The vector loop of [`Lanes::Statements`]: `k` times, the paired stores as one, the
/// carried locals and counters as the original sets them; the original loop then runs
/// the last iteration. Ends the block `emit` opened.
fn by_statement(
    f: &mut Function,
    plan: &LoopPlan,
    pairs: &[(usize, usize)],
    k: u32,
    locals: &mut Locals,
) {
    use Instruction as I;
    let mut memo = HashMap::new();
    // Each carried local with a scalar local for its next value.
    let next: Vec<(u32, u32)> = plan
        .carried
        .keys()
        .map(|&x| (x, locals.add(plan.elem.val_type())))
        .collect();
    f.instruction(&I::Loop(wasm_encoder::BlockType::Empty));
    // What the carried locals will hold, read before the stores as the original reads it.
    for (&n, &(_, t)) in plan.carried.values().zip(&next) {
        scalar(f, plan, n);
        f.instruction(&I::LocalSet(t));
    }
    for &(a, b) in pairs {
        let (low, va) = &plan.stores[a];
        affine(f, &low.addr);
        pack_pair(f, plan, va, &plan.stores[b].1, &mut memo);
        f.instruction(&plan.elem.store_pair(mem_arg(low.offset, plan.elem)));
    }
    for &(x, t) in &next {
        f.instruction(&I::LocalGet(t)).instruction(&I::LocalSet(x));
    }
    next_vector(f, plan, 1, k);
    f.instruction(&I::End);
}

/// Ends a vector loop's body: advances the counters by `iterations` steps, counts `k`
/// down and loops while it is not zero, then closes the loop.
fn next_vector(f: &mut Function, plan: &LoopPlan, iterations: u32, k: u32) {
    use Instruction as I;
    for (&x, &s) in &plan.steps {
        f.instruction(&I::LocalGet(x))
            .instruction(&I::I32Const(s.wrapping_mul(iterations) as i32))
            .instruction(&I::I32Add)
            .instruction(&I::LocalSet(x));
    }
    f.instruction(&I::LocalGet(k))
        .instruction(&I::I32Const(1))
        .instruction(&I::I32Sub)
        .instruction(&I::LocalTee(k))
        .instruction(&I::BrIf(0))
        .instruction(&I::End);
}

/// Pushes the vector of nodes `a` (lane 0) and `b` (lane 1), computed side by side
/// where they have the same shape (operands of `+`, `×`, min and max swapped where
/// [`pair_cost`] found that better) and apart otherwise.
fn pack_pair(
    f: &mut Function,
    plan: &LoopPlan,
    a: &usize,
    b: &usize,
    memo: &mut HashMap<(usize, usize), (u32, bool)>,
) {
    use Instruction as I;
    let (a, b) = (*a, *b);
    let swap = pair_cost(plan, a, b, memo).1;
    match (&plan.nodes[a], &plan.nodes[b]) {
        (Node::Const(x), Node::Const(y)) => {
            let shift = plan.elem.bytes() * 8;
            f.instruction(&I::V128Const(
                ((u128::from(*y) << shift) | u128::from(*x)) as i128,
            ));
        }
        (Node::Param(x), Node::Param(y)) if x == y && !plan.carried.contains_key(x) => {
            f.instruction(&I::LocalGet(*x))
                .instruction(&plan.elem.splat());
        }
        (Node::Load(s), Node::Load(t)) if s == t => {
            affine(f, &s.addr);
            f.instruction(&plan.elem.load_splat(mem_arg(s.offset, plan.elem)));
        }
        (Node::Load(s), Node::Load(t)) if next_element(s, t, plan.elem) => {
            affine(f, &s.addr);
            f.instruction(&plan.elem.load_pair(mem_arg(s.offset, plan.elem)));
        }
        (Node::Un(o, a0), Node::Un(p, b0)) if o == p => {
            pack_pair(f, plan, a0, b0, memo);
            f.instruction(&plan.elem.un(*o, true));
        }
        (Node::Bin(o, a0, a1), Node::Bin(p, b0, b1)) if o == p => {
            let (b0, b1) = if swap { (b1, b0) } else { (b0, b1) };
            pack_pair(f, plan, a0, b0, memo);
            pack_pair(f, plan, a1, b1, memo);
            f.instruction(&plan.elem.bin(*o, true));
        }
        _ => {
            scalar(f, plan, a);
            f.instruction(&plan.elem.splat());
            scalar(f, plan, b);
            f.instruction(&plan.elem.replace(1));
        }
    }
}

/// Pushes node `n` as the scalar the original computes.
fn scalar(f: &mut Function, plan: &LoopPlan, n: usize) {
    use Instruction as I;
    let elem = plan.elem;
    match &plan.nodes[n] {
        Node::Const(bits) => {
            f.instruction(&elem.constant(*bits));
        }
        Node::Param(x) => {
            f.instruction(&I::LocalGet(*x));
        }
        Node::Load(s) => {
            affine(f, &s.addr);
            f.instruction(&elem.load(mem_arg(s.offset, elem)));
        }
        Node::Un(o, a) => {
            scalar(f, plan, *a);
            f.instruction(&elem.un(*o, false));
        }
        Node::Bin(o, a, b) => {
            scalar(f, plan, *a);
            scalar(f, plan, *b);
            f.instruction(&elem.bin(*o, false));
        }
    }
}

fn count_uses(nodes: &[Node], n: usize, uses: &mut [u32]) {
    uses[n] += 1;
    if uses[n] > 1 {
        return;
    }
    match &nodes[n] {
        Node::Un(_, a) => count_uses(nodes, *a, uses),
        Node::Bin(_, a, b) => {
            count_uses(nodes, *a, uses);
            count_uses(nodes, *b, uses);
        }
        _ => {}
    }
}

/// Emits nodes as vectors, lane 0 for the iteration the counters are at and lane i for
/// the i-th after it.
struct Vector<'a> {
    plan: &'a LoopPlan,
    /// For each carried local, its `(previous, current)` vector locals.
    carried: &'a BTreeMap<u32, (u32, u32)>,
    uses: &'a [u32],
    /// Nodes used more than once, already computed into a local.
    saved: HashMap<usize, u32>,
}

impl Vector<'_> {
    fn node(&mut self, f: &mut Function, n: usize, locals: &mut Locals) {
        use Instruction as I;
        if let Some(&l) = self.saved.get(&n) {
            f.instruction(&I::LocalGet(l));
            return;
        }
        let elem = self.plan.elem;
        let (bytes, lanes) = (elem.bytes(), elem.lanes());
        match &self.plan.nodes[n] {
            Node::Const(bits) => {
                f.instruction(&elem.splat_constant(*bits));
            }
            Node::Param(x) => match self.carried.get(x) {
                // Lane 0 is what the previous vector's last lane left; lane i + 1 what
                // lane i of this one leaves.
                Some(&(prev, cur)) => {
                    let mut bytes_of = [0u8; 16];
                    for (i, b) in bytes_of.iter_mut().enumerate() {
                        *b = (16 - bytes as usize + i) as u8;
                    }
                    f.instruction(&I::LocalGet(prev))
                        .instruction(&I::LocalGet(cur))
                        .instruction(&I::I8x16Shuffle(bytes_of));
                }
                None => {
                    f.instruction(&I::LocalGet(*x)).instruction(&elem.splat());
                }
            },
            Node::Load(s) => {
                let d = s.addr.delta(&self.plan.steps);
                affine(f, &s.addr);
                if d == bytes as i32 {
                    f.instruction(&I::V128Load(mem_arg(s.offset, elem)));
                } else {
                    f.instruction(&elem.load_splat(mem_arg(s.offset, elem)));
                    for lane in (1..lanes as u8).filter(|_| d != 0) {
                        affine(f, &s.addr);
                        f.instruction(&I::I32Const(d.wrapping_mul(i32::from(lane))))
                            .instruction(&I::I32Add)
                            .instruction(&elem.load(mem_arg(s.offset, elem)))
                            .instruction(&elem.replace(lane));
                    }
                }
            }
            Node::Un(op, a) => {
                self.node(f, *a, locals);
                f.instruction(&elem.un(*op, true));
            }
            Node::Bin(op, a, b) => {
                self.node(f, *a, locals);
                self.node(f, *b, locals);
                f.instruction(&elem.bin(*op, true));
            }
        }
        if self.uses[n] > 1 {
            let l = locals.add(ValType::V128);
            f.instruction(&I::LocalTee(l));
            self.saved.insert(n, l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loops of the shapes clang gives scalar C, and five the pass must leave alone. Each
    /// export takes a destination, a source and a count; `mem` is the memory.
    const LOOPS: &str = r#"
      (module
        (memory (export "mem") 1 1)
        ;; dst[i+1] = (src[i] + src[i+1] + src[i+2]) * 0.33333, src[i+2] carried to the
        ;; next iteration in a local; counts i by 8 up to 8n; returns what the loop
        ;; leaves in its locals.
        (func (export "stencil") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $i i32) (local $prev f64) (local $t i32)
          (local.set $prev (f64.load (local.get $src)))
          (loop $l
            (local.set $t (i32.add (local.get $src) (local.get $i)))
            (f64.store offset=8 (i32.add (local.get $dst) (local.get $i))
              (f64.mul
                (f64.add (f64.add (local.get $prev) (f64.load offset=8 (local.get $t)))
                         (local.tee $prev (f64.load offset=16 (local.get $t))))
                (f64.const 0.33333)))
            (br_if $l (i32.ne (local.tee $i (i32.add (local.get $i) (i32.const 8)))
                              (i32.mul (local.get $n) (i32.const 8)))))
          (f64.add (local.get $prev)
                   (f64.convert_i32_u (i32.add (local.get $t) (local.get $i)))))
        ;; dst[j] = dst[j] + 2.5 * src[j] with two pointer counters and a count down.
        (func (export "axpy") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (loop $l
            (f64.store (local.get $dst)
              (f64.add (f64.load (local.get $dst))
                       (f64.mul (f64.const 2.5) (f64.load (local.get $src)))))
            (local.set $dst (i32.add (local.get $dst) (i32.const 8)))
            (local.set $src (i32.add (local.get $src) (i32.const 8)))
            (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
          (f64.convert_i32_u (i32.add (local.get $dst) (local.get $src))))
        ;; src[-j - 1] = -min(src[3j], 1) - floor(src[3j]) and dst[j] = sqrt(|src[3j]|):
        ;; a strided load, and a store that walks down, its address operand 4096 below
        ;; the element (the offset adds it back), so that the operand wraps below 0 while
        ;; the element is still in memory.
        (func (export "strided") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $j i32)
          (loop $l
            (f64.store offset=4096 (i32.sub (i32.sub (local.get $src) (i32.const 4104))
                                            (i32.shl (local.get $j) (i32.const 3)))
              (f64.sub
                (f64.neg (f64.min (f64.load (i32.add (local.get $src)
                                                     (i32.mul (local.get $j) (i32.const 24))))
                                  (f64.const 1)))
                (f64.floor (f64.load (i32.add (local.get $src)
                                               (i32.mul (local.get $j) (i32.const 24)))))))
            (f64.store (i32.add (local.get $dst) (i32.shl (local.get $j) (i32.const 3)))
              (f64.sqrt (f64.abs (f64.load (i32.add (local.get $src)
                                                     (i32.mul (local.get $j) (i32.const 24)))))))
            (br_if $l (i32.ne (local.tee $j (i32.add (local.get $j) (i32.const 1)))
                              (local.get $n))))
          (f64.convert_i32_u (local.get $j)))
        ;; dst[j] = 2 src[j], then src[j] = dst[j] + 1 read back after the store: left
        ;; alone, the second read sees the store.
        (func (export "forward") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $x f64)
          (loop $l
            (local.set $x (f64.load (local.get $dst)))
            (f64.store (local.get $dst) (f64.mul (f64.const 2) (f64.load (local.get $src))))
            (f64.store (local.get $src) (f64.add (local.get $x) (f64.load (local.get $dst))))
            (local.set $dst (i32.add (local.get $dst) (i32.const 8)))
            (local.set $src (i32.add (local.get $src) (i32.const 8)))
            (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
          (local.get $x))
        ;; A body unrolled by two, as clang unrolls gemm's: dst[j] = 1.5 src[j] + x and
        ;; dst[j+1] = src[j+1] * 1.5 + (x = dst[j+1]), the operands of the second in
        ;; another order, x carried to the next iteration from the element the same
        ;; iteration then overwrites.
        (func (export "pairs") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $i i32) (local $t i32) (local $x f64)
          (loop $l
            (f64.store (local.tee $t (i32.add (local.get $dst) (local.get $i)))
              (f64.add (f64.mul (f64.const 1.5) (f64.load (i32.add (local.get $src) (local.get $i))))
                       (local.get $x)))
            (f64.store (local.tee $t (i32.add (local.get $t) (i32.const 8)))
              (f64.add (f64.mul (f64.load offset=8 (i32.add (local.get $src) (local.get $i)))
                                (f64.const 1.5))
                       (local.tee $x (f64.load (local.get $t)))))
            (br_if $l (i32.ne (local.tee $i (i32.add (local.get $i) (i32.const 16)))
                              (i32.shl (local.get $n) (i32.const 4)))))
          (f64.add (local.get $x) (f64.convert_i32_u (local.get $t))))
        ;; jacobi-1d as clang unrolls it: a[j-1] + a[j] + a[j+1], a[j+1] carried.
        (func (export "pairs_carried") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $i i32) (local $x f64) (local $t i32)
          (local.set $x (f64.load (local.get $src)))
          (loop $l
            (local.set $t (i32.add (local.get $src) (local.get $i)))
            (f64.store offset=8 (i32.add (local.get $dst) (local.get $i))
              (f64.mul (f64.add (f64.add (f64.load (local.get $t)) (local.get $x))
                                (local.tee $x (f64.load offset=16 (local.get $t))))
                       (f64.const 0.25)))
            (f64.store offset=16 (i32.add (local.get $dst) (local.get $i))
              (f64.mul (f64.add (f64.add (local.get $x) (f64.load offset=8 (local.get $t)))
                                (local.tee $x (f64.load offset=24 (local.get $t))))
                       (f64.const 0.25)))
            (br_if $l (i32.ne (local.tee $i (i32.add (local.get $i) (i32.const 16)))
                              (i32.shl (local.get $n) (i32.const 4)))))
          (local.get $x))
        ;; Unrolled by two, but the second half reads half of what the first stored:
        ;; left alone.
        (func (export "pairs_overlap") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $i i32) (local $t i32)
          (loop $l
            (local.set $t (i32.add (local.get $dst) (local.get $i)))
            (f64.store (local.get $t)
              (f64.mul (f64.load (i32.sub (local.get $t) (i32.const 4))) (f64.const 2)))
            (f64.store offset=8 (local.get $t)
              (f64.mul (f64.load offset=4 (local.get $t)) (f64.const 2)))
            (br_if $l (i32.ne (local.tee $i (i32.add (local.get $i) (i32.const 16)))
                              (i32.shl (local.get $n) (i32.const 4)))))
          (f64.convert_i32_u (local.get $src)))
        ;; stencil in f32, four lanes.
        (func (export "stencil32") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $i i32) (local $prev f32) (local $t i32)
          (local.set $prev (f32.load (local.get $src)))
          (loop $l
            (local.set $t (i32.add (local.get $src) (local.get $i)))
            (f32.store offset=4 (i32.add (local.get $dst) (local.get $i))
              (f32.mul
                (f32.add (f32.add (local.get $prev) (f32.load offset=4 (local.get $t)))
                         (local.tee $prev (f32.load offset=8 (local.get $t))))
                (f32.const 0.33333)))
            (br_if $l (i32.ne (local.tee $i (i32.add (local.get $i) (i32.const 4)))
                              (i32.shl (local.get $n) (i32.const 2)))))
          (f64.add (f64.promote_f32 (local.get $prev))
                   (f64.convert_i32_u (i32.add (local.get $t) (local.get $i)))))
        ;; strided in f32: a load three elements apart, a store walking down.
        (func (export "strided32") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $j i32)
          (loop $l
            (f32.store offset=4096 (i32.sub (i32.sub (local.get $src) (i32.const 4100))
                                            (i32.shl (local.get $j) (i32.const 2)))
              (f32.sub
                (f32.neg (f32.max (f32.load (i32.add (local.get $src)
                                                     (i32.mul (local.get $j) (i32.const 12))))
                                  (f32.const -1)))
                (f32.ceil (f32.load (i32.add (local.get $src)
                                              (i32.mul (local.get $j) (i32.const 12)))))))
            (f32.store (i32.add (local.get $dst) (i32.shl (local.get $j) (i32.const 2)))
              (f32.div (f32.abs (f32.load (i32.add (local.get $src)
                                                    (i32.mul (local.get $j) (i32.const 12)))))
                       (f32.const 3)))
            (br_if $l (i32.ne (local.tee $j (i32.add (local.get $j) (i32.const 1)))
                              (local.get $n))))
          (f64.convert_i32_u (local.get $j)))
        ;; axpy in f32 as clang unrolls it: dst[j] = 0.5 src[j] + dst[j], twice.
        (func (export "pairs32") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $i i32) (local $t i32)
          (loop $l
            (f32.store (local.tee $t (i32.add (local.get $dst) (local.get $i)))
              (f32.add (f32.mul (f32.load (i32.add (local.get $src) (local.get $i)))
                                (f32.const 0.5))
                       (f32.load (local.get $t))))
            (f32.store (local.tee $t (i32.add (local.get $t) (i32.const 4)))
              (f32.add (f32.load (local.get $t))
                       (f32.mul (f32.const 0.5)
                                (f32.load offset=4 (i32.add (local.get $src) (local.get $i))))))
            (br_if $l (i32.ne (local.tee $i (i32.add (local.get $i) (i32.const 8)))
                              (i32.shl (local.get $n) (i32.const 3)))))
          (f64.convert_i32_u (local.get $t)))
        ;; f32 and f64 in one loop: left alone.
        (func (export "mixed") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (loop $l
            (f32.store (local.get $dst) (f32.load (local.get $src)))
            (f64.store offset=8 (local.get $dst) (f64.load offset=8 (local.get $src)))
            (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
            (local.set $src (i32.add (local.get $src) (i32.const 16)))
            (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
          (f64.const 0))
        ;; A recurrence (each value depends on the one before): left alone.
        (func (export "recurrence") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (local $x f64)
          (loop $l
            (local.set $x (f64.add (f64.mul (local.get $x) (f64.const 0.5))
                                   (f64.load (local.get $src))))
            (f64.store (local.get $dst) (local.get $x))
            (local.set $dst (i32.add (local.get $dst) (i32.const 8)))
            (local.set $src (i32.add (local.get $src) (i32.const 8)))
            (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
          (local.get $x))
        ;; A loop with a call: left alone.
        (func $id (param f64) (result f64) (local.get 0))
        (func (export "calls") (param $dst i32) (param $src i32) (param $n i32) (result f64)
          (loop $l
            (f64.store (local.get $dst) (call $id (f64.load (local.get $src))))
            (local.set $dst (i32.add (local.get $dst) (i32.const 8)))
            (local.set $src (i32.add (local.get $src) (i32.const 8)))
            (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
          (f64.const 0)))
    "#;

    const EXPORTS: [&str; 13] = [
        "stencil",
        "axpy",
        "strided",
        "pairs",
        "pairs_carried",
        "pairs_overlap",
        "stencil32",
        "strided32",
        "pairs32",
        "mixed",
        "forward",
        "recurrence",
        "calls",
    ];

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Calls `name(dst, src, n)` on a fresh instance of `wasm` whose memory starts as
    /// `memory`; returns the result's bits or the trap, and the memory afterwards.
    fn call(
        module: &wasmtime::Module,
        name: &str,
        args: [i32; 3],
        memory: &[u8],
    ) -> (Result<u64, String>, Vec<u8>) {
        let mut store = wasmtime::Store::new(module.engine(), ());
        let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("instantiates");
        let mem = instance
            .get_memory(&mut store, "mem")
            .expect("memory export");
        mem.data_mut(&mut store).copy_from_slice(memory);
        let f = instance
            .get_typed_func::<(i32, i32, i32), f64>(&mut store, name)
            .expect("export");
        let result = f
            .call(&mut store, (args[0], args[1], args[2]))
            .map(f64::to_bits)
            .map_err(|e| format!("{:?}", e.downcast_ref::<wasmtime::Trap>()));
        (result, mem.data(&store).to_vec())
    }

    #[test]
    fn vectorised_loops_compute_exactly_what_the_originals_do() {
        let original = wat::parse_str(LOOPS).expect("valid wat");
        let (vectorised, loops) = vectorise(&original).expect("loops vectorised");
        assert_eq!(
            loops, 8,
            "stencil, axpy, strided, both pairs and the three f32 loops; not pairs_overlap, \
             mixed, forward, recurrence or calls"
        );
        assert!(vectorise(&vectorised).is_none(), "the pass runs once");
        let engine = wasmtime::Engine::default();
        let original = wasmtime::Module::new(&engine, &original).expect("compiles");
        let vectorised = wasmtime::Module::new(&engine, &vectorised).expect("compiles");

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut memory = vec![0u8; 65536];
        let (mut trapped, mut vector_sized) = (0, 0);
        for case in 0..6500 {
            // Finite doubles, so that no NaN payload is in play.
            for chunk in memory.chunks_exact_mut(8) {
                let v = (rng.below(2001) as f64 - 1000.0) / 8.0;
                chunk.copy_from_slice(&v.to_le_bytes());
            }
            let name = EXPORTS[case % EXPORTS.len()];
            // Near each other (overlapping, or a few elements apart), anywhere, near the
            // end of memory or wrapping around 2^32; counts small, odd, even or past
            // the end of memory.
            let src = match rng.below(4) {
                0 => rng.below(1024) as i32,
                1 => rng.below(65536) as i32,
                2 => 65536 - rng.below(2048) as i32,
                _ => -(rng.below(64) as i32),
            };
            let dst = match rng.below(3) {
                0 => src + (rng.below(64) as i32 - 32),
                1 => rng.below(65536) as i32,
                _ => 60000 + rng.below(8192) as i32,
            };
            let n = match rng.below(3) {
                0 => 1 + rng.below(6) as i32,
                1 => 1 + rng.below(300) as i32,
                _ => 1 + rng.below(9000) as i32,
            };
            let want = call(&original, name, [dst, src, n], &memory);
            let got = call(&vectorised, name, [dst, src, n], &memory);
            assert_eq!(got.0, want.0, "{name}({dst}, {src}, {n}): result");
            assert!(got.1 == want.1, "{name}({dst}, {src}, {n}): memory differs");
            trapped += usize::from(want.0.is_err());
            vector_sized += usize::from(want.0.is_ok() && n >= 3);
        }
        assert!(
            trapped > 100 && vector_sized > 1000,
            "cases cover both: {trapped} traps, {vector_sized} long loops"
        );
    }
}
