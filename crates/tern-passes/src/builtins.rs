//! Tern's pass over a guest's libc memory routines, run on the Wasm before compilation.
//!
//! A C guest's `memcpy`, `memmove`, `memset`, `memcmp` and `strlen` come from its libc
//! (wasi-libc's are musl's C loops, a word or a byte per step), and Cranelift compiles
//! them as written: in SQLite's speedtest1 they take 20 % of the run, against 8 % for
//! the vectorised routines of the native build. WebAssembly has instructions for the
//! first three, `memory.copy` and `memory.fill`, which Wasmtime runs with the host's own
//! `memmove` and `memset`; `memcmp` and `strlen` can read eight bytes per step.
//!
//! The pass finds these functions by their names in the module's name section, with
//! the C signature `(i32, i32, i32) -> i32`, and only if each is a leaf that touches no
//! global, table or function but these routines. LLVM-based toolchains (clang, rustc)
//! call these symbols for their own memory intrinsics, so a function by that name in a
//! module they linked has the C semantics. A routine that already uses `memory.copy` or
//! `memory.fill` (a libc built with bulk memory) is left alone. The pass puts a fast
//! path in front of each routine's own code:
//!
//! ```text
//! memcpy, memmove, memset:
//!   if dst + n <= memory size && src + n <= memory size   (memset: dst only)
//!      && (memcpy only) the two ranges do not overlap
//!     then memory.copy dst src n  (memset: memory.fill dst c n); return dst
//! memcmp:
//!   if l + n <= memory size && r + n <= memory size
//!     then while n >= 8 && the next 8 bytes are equal: l += 8, r += 8, n -= 8
//! strlen:
//!   p = s; while p + 8 <= memory size:
//!     if the 8 bytes at p hold a NUL: return p - s + its index; p += 8
//! (the routine's original code, unchanged)
//! ```
//!
//! Where a fast path returns, the original would have written the same bytes and
//! returned `dst` (a `memmove` copies as `memory.copy` does; a `memcpy` of disjoint
//! ranges has one result; `memory.fill` stores the low byte of `c`, as `memset` does).
//! Everything else — an overlapping `memcpy`, whose result depends on the loop, or a
//! range out of bounds, which traps part-way — runs the original code. `memcmp`'s
//! result depends only on the bytes from the first difference on, which its own code
//! still compares; `strlen`'s is a length, which has one value, and near the end of
//! memory its own code runs from the start. So the guest sees the same memory, return values and traps with or
//! without the pass. No function is added or renumbered, so backtraces name the same
//! functions, and the code of every function before the first routine keeps its
//! offsets.
//!
//! No crate does this: Binaryen's optimiser recognises no libc routines, and Wasmtime
//! compiles what it is given. The pass leaves the module as it is when it finds nothing,
//! or when the module does not validate (Wasmtime then reports the error on the
//! original bytes). `tern_runtime::EngineOptions::libc_builtins` turns it off for plain runs;
//! the migratable rewrite ([`crate::migratable`]) always applies it first.

use std::borrow::Cow;
use std::convert::Infallible;
use std::ops::Range;

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{CodeSection, Function, Instruction, ValType};
use wasmparser::{Operator, Parser};

/// What identifies the pass: its source. The engine fingerprint and the migratable
/// rewrite's cache key include it, so an artifact compiled after an older pass is never
/// taken for a current one.
pub const IDENTITY: &str = include_str!("builtins.rs");

/// The custom section the pass leaves in its output, so that it never runs twice on a
/// module (the migratable rewrite runs it, and the runtime is given the result).
const MARK: &str = "tern:libc-fast-paths";

/// A libc routine the pass knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routine {
    Memcpy,
    Memmove,
    Memset,
    Memcmp,
    Strlen,
}

impl Routine {
    const ALL: [Routine; 5] = [
        Routine::Memcpy,
        Routine::Memmove,
        Routine::Memset,
        Routine::Memcmp,
        Routine::Strlen,
    ];

    /// The locals its fast path needs beside the parameters.
    fn scratch_locals(self) -> Vec<(u32, ValType)> {
        match self {
            Routine::Strlen => vec![(1, ValType::I32), (1, ValType::I64)],
            _ => Vec::new(),
        }
    }

    /// How many `i32` parameters its C signature has (it returns one `i32`).
    fn params(self) -> usize {
        match self {
            Routine::Strlen => 1,
            _ => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Routine::Memcpy => "memcpy",
            Routine::Memmove => "memmove",
            Routine::Memset => "memset",
            Routine::Memcmp => "memcmp",
            Routine::Strlen => "strlen",
        }
    }
}

/// What the pass will do to a module.
#[derive(Debug)]
struct Plan {
    found: Vec<Found>,
    /// How many functions the module has, imported and defined.
    funcs: u32,
}

/// One routine found in the module.
#[derive(Debug)]
struct Found {
    routine: Routine,
    /// Its function index.
    func: u32,
    /// Its body's bytes in the module.
    body: Range<usize>,
}

/// Returns `wasm` with its libc memory routines given fast paths, or `wasm` itself when
/// the module has none the pass recognises (a module whose name section was stripped,
/// as Binaryen's `wasm-opt` does unless given `-g`, keeps its routines as written).
pub fn apply(wasm: &[u8]) -> Cow<'_, [u8]> {
    let plan = match find(wasm) {
        Some(plan) if !plan.found.is_empty() => plan,
        _ => return Cow::Borrowed(wasm),
    };
    if wasmparser::Validator::new().validate_all(wasm).is_err() {
        return Cow::Borrowed(wasm);
    }
    match write(wasm, &plan) {
        Ok(out) => {
            let names: Vec<_> = plan.found.iter().map(|f| f.routine.name()).collect();
            tracing::debug!(routines = ?names, "libc routines given bulk-memory fast paths");
            Cow::Owned(out)
        }
        Err(e) => {
            tracing::debug!(error = %e, "libc routines left as they are");
            Cow::Borrowed(wasm)
        }
    }
}

/// The routines of `wasm` the pass may replace, or `None` when the module does not parse
/// or has several or 64-bit or shared memories.
fn find(wasm: &[u8]) -> Option<Plan> {
    let outline = crate::outline::outline(wasm, MARK)?;
    let mut found = Vec::new();
    for routine in Routine::ALL {
        // A name given twice is ambiguous: leave the module alone.
        let mut named = outline.names.iter().filter(|(_, n)| n == routine.name());
        let (Some((func, _)), None) = (named.next(), named.next()) else {
            continue;
        };
        let Some(defined) = func.checked_sub(outline.imported_funcs) else {
            continue;
        };
        let (Some(&ty), Some(body)) = (
            outline.func_types.get(*func as usize),
            outline.bodies.get(defined as usize),
        ) else {
            continue;
        };
        let c_signature = (
            vec![wasmparser::ValType::I32; routine.params()],
            vec![wasmparser::ValType::I32],
        );
        if outline.types.get(ty as usize) == Some(&Some(c_signature)) {
            found.push(Found {
                routine,
                func: *func,
                body: body.clone(),
            });
        }
    }
    // musl's `memmove` calls `memcpy` when the ranges are disjoint: calls among the
    // routines are allowed, any other call is not.
    let routines: Vec<u32> = found.iter().map(|f| f.func).collect();
    found.retain(|f| is_plain_leaf(&wasm[f.body.clone()], &routines));
    Some(Plan {
        found,
        funcs: outline.func_types.len() as u32,
    })
}

/// Whether a function body only computes on its locals, reads and writes linear memory
/// and calls `routines`: no other call, no global, no table, no `memory.grow`, no exception or
/// `unreachable` (a checking routine that traps on some inputs is left alone).
fn is_plain_leaf(body: &[u8], routines: &[u32]) -> bool {
    let body = wasmparser::FunctionBody::new(wasmparser::BinaryReader::new(body, 0));
    let Ok(mut reader) = body.get_operators_reader() else {
        return false;
    };
    while !reader.eof() {
        let Ok(op) = reader.read() else {
            return false;
        };
        let allowed = match op {
            Operator::Call { function_index } => routines.contains(&function_index),
            Operator::CallIndirect { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::GlobalGet { .. }
            | Operator::GlobalSet { .. }
            | Operator::MemoryGrow { .. }
            | Operator::MemoryInit { .. }
            | Operator::DataDrop { .. }
            | Operator::TableGet { .. }
            | Operator::TableSet { .. }
            | Operator::TableGrow { .. }
            | Operator::TableSize { .. }
            | Operator::TableFill { .. }
            | Operator::TableCopy { .. }
            | Operator::TableInit { .. }
            | Operator::MemoryCopy { .. }
            | Operator::MemoryFill { .. }
            | Operator::ElemDrop { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. }
            | Operator::TryTable { .. }
            | Operator::Try { .. }
            | Operator::Unreachable => false,
            _ => true,
        };
        if !allowed {
            return false;
        }
    }
    true
}

/// The module with a fast path in front of each found routine.
fn write(wasm: &[u8], plan: &Plan) -> Result<Vec<u8>, reencode::Error<Infallible>> {
    let mut pass = Pass {
        found: &plan.found,
        next_func: plan.funcs,
    };
    let mut module = wasm_encoder::Module::new();
    pass.parse_core_module(&mut module, Parser::new(0), wasm)?;
    module.section(&wasm_encoder::CustomSection {
        name: MARK.into(),
        data: Cow::Borrowed(&[]),
    });
    Ok(module.finish())
}

struct Pass<'a> {
    found: &'a [Found],
    /// Index of the function whose body the code section reader gives next.
    next_func: u32,
}

/// An `i64` access at any alignment, in memory 0.
const WORD: wasm_encoder::MemArg = wasm_encoder::MemArg {
    offset: 0,
    align: 0,
    target: wasm_encoder::MemArgTarget::Memory(0),
    ordering: None,
};

/// Pushes the memory's size in bytes, as an `i64`.
fn memory_bytes(f: &mut Function) {
    f.instruction(&Instruction::MemorySize(0))
        .instruction(&Instruction::I64ExtendI32U)
        .instruction(&Instruction::I64Const(16))
        .instruction(&Instruction::I64Shl);
}

/// Appends the fast path of `routine` to `f`: when it applies, it does the routine's
/// work and returns `dst`; otherwise it falls through to the routine's own code.
/// `memcmp`'s fast path skips the equal prefix instead and always falls through;
/// `strlen`'s is [`scan_words_for_nul`]. `scratch` is the first of the
/// [`Routine::scratch_locals`].
fn fast_path(f: &mut Function, routine: Routine, scratch: u32) {
    const DST: u32 = 0;
    const SRC_OR_BYTE: u32 = 1;
    const N: u32 = 2;
    let bulk = match routine {
        Routine::Strlen => return scan_words_for_nul(f, scratch, scratch + 1),
        Routine::Memcmp => None,
        Routine::Memset => Some(Instruction::MemoryFill(0)),
        Routine::Memcpy | Routine::Memmove => Some(Instruction::MemoryCopy {
            src_mem: 0,
            dst_mem: 0,
        }),
    };
    // `p + n <= memory size in bytes`, computed in 64 bits so it cannot wrap, for the
    // destination and (but for `memset`) the source.
    let in_bounds = |f: &mut Function, p: u32| {
        f.instruction(&Instruction::LocalGet(p))
            .instruction(&Instruction::I64ExtendI32U)
            .instruction(&Instruction::LocalGet(N))
            .instruction(&Instruction::I64ExtendI32U)
            .instruction(&Instruction::I64Add);
        memory_bytes(f);
        f.instruction(&Instruction::I64LeU);
    };
    in_bounds(f, DST);
    if routine != Routine::Memset {
        in_bounds(f, SRC_OR_BYTE);
        f.instruction(&Instruction::I32And);
    }
    let Some(bulk) = bulk else {
        skip_equal_words(f);
        return;
    };
    if routine == Routine::Memcpy {
        // Disjoint: `dst - src >= n` and `src - dst >= n`, both modulo 2^32.
        for (a, b) in [(DST, SRC_OR_BYTE), (SRC_OR_BYTE, DST)] {
            f.instruction(&Instruction::LocalGet(a))
                .instruction(&Instruction::LocalGet(b))
                .instruction(&Instruction::I32Sub)
                .instruction(&Instruction::LocalGet(N))
                .instruction(&Instruction::I32GeU)
                .instruction(&Instruction::I32And);
        }
    }
    f.instruction(&Instruction::If(wasm_encoder::BlockType::Empty));
    for p in [DST, SRC_OR_BYTE, N] {
        f.instruction(&Instruction::LocalGet(p));
    }
    f.instruction(&bulk);
    f.instruction(&Instruction::LocalGet(DST))
        .instruction(&Instruction::Return)
        .instruction(&Instruction::End);
}

/// For `memcmp(l, r, n)` with both ranges in bounds: while 8 or more bytes are left and
/// the next 8 are equal, advance `l` and `r` and shrink `n` (its parameters, which its
/// own code then reads). The result of `memcmp` depends only on the bytes from the first
/// difference on, so the routine's code returns what it would have; it no longer spends
/// a loop turn on each equal byte.
fn skip_equal_words(f: &mut Function) {
    f.instruction(&Instruction::If(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::Block(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::Loop(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::LocalGet(2))
        .instruction(&Instruction::I32Const(8))
        .instruction(&Instruction::I32LtU)
        .instruction(&Instruction::BrIf(1))
        .instruction(&Instruction::LocalGet(0))
        .instruction(&Instruction::I64Load(WORD))
        .instruction(&Instruction::LocalGet(1))
        .instruction(&Instruction::I64Load(WORD))
        .instruction(&Instruction::I64Ne)
        .instruction(&Instruction::BrIf(1));
    for (local, step) in [(0, 8), (1, 8), (2, -8)] {
        f.instruction(&Instruction::LocalGet(local))
            .instruction(&Instruction::I32Const(step))
            .instruction(&Instruction::I32Add)
            .instruction(&Instruction::LocalSet(local));
    }
    f.instruction(&Instruction::Br(0))
        .instruction(&Instruction::End)
        .instruction(&Instruction::End)
        .instruction(&Instruction::End);
}

/// For `strlen(s)`: reads eight bytes at a time from `s` and, at the first word with a
/// NUL in it, returns its offset; the lowest byte the bit trick
/// `(w - 0x01..01) & !w & 0x80..80` flags is exactly the first NUL (borrows only run
/// towards higher bytes). Within eight bytes of the end of memory it runs the routine's
/// own code from the start, which finds the NUL or traps where it always did.
fn scan_words_for_nul(f: &mut Function, p: u32, w: u32) {
    let empty = wasm_encoder::BlockType::Empty;
    f.instruction(&Instruction::LocalGet(0))
        .instruction(&Instruction::LocalSet(p))
        .instruction(&Instruction::Block(empty))
        .instruction(&Instruction::Loop(empty))
        // p + 8 > memory size: to the routine's code.
        .instruction(&Instruction::LocalGet(p))
        .instruction(&Instruction::I64ExtendI32U)
        .instruction(&Instruction::I64Const(8))
        .instruction(&Instruction::I64Add);
    memory_bytes(f);
    f.instruction(&Instruction::I64GtU)
        .instruction(&Instruction::BrIf(1))
        .instruction(&Instruction::LocalGet(p))
        .instruction(&Instruction::I64Load(WORD))
        .instruction(&Instruction::LocalTee(w))
        .instruction(&Instruction::I64Const(0x0101_0101_0101_0101))
        .instruction(&Instruction::I64Sub)
        .instruction(&Instruction::LocalGet(w))
        .instruction(&Instruction::I64Const(-1))
        .instruction(&Instruction::I64Xor)
        .instruction(&Instruction::I64And)
        .instruction(&Instruction::I64Const(0x8080_8080_8080_8080_u64 as i64))
        .instruction(&Instruction::I64And)
        .instruction(&Instruction::LocalTee(w))
        .instruction(&Instruction::I64Eqz)
        .instruction(&Instruction::If(empty))
        .instruction(&Instruction::LocalGet(p))
        .instruction(&Instruction::I32Const(8))
        .instruction(&Instruction::I32Add)
        .instruction(&Instruction::LocalSet(p))
        .instruction(&Instruction::Br(1))
        .instruction(&Instruction::End)
        // p - s + (index of the lowest flagged byte)
        .instruction(&Instruction::LocalGet(p))
        .instruction(&Instruction::LocalGet(0))
        .instruction(&Instruction::I32Sub)
        .instruction(&Instruction::LocalGet(w))
        .instruction(&Instruction::I64Ctz)
        .instruction(&Instruction::I64Const(3))
        .instruction(&Instruction::I64ShrU)
        .instruction(&Instruction::I32WrapI64)
        .instruction(&Instruction::I32Add)
        .instruction(&Instruction::Return)
        .instruction(&Instruction::End)
        .instruction(&Instruction::End);
}

impl Reencode for Pass<'_> {
    type Error = Infallible;

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Infallible>> {
        self.next_func -= section.count();
        for body in section {
            let body = body?;
            let func = self.next_func;
            self.next_func += 1;
            let Some(found) = self.found.iter().find(|f| f.func == func) else {
                // Copied byte for byte: no index in any body changes.
                code.raw(body.as_bytes());
                continue;
            };
            let mut locals = Vec::new();
            let mut next_local = found.routine.params() as u32;
            for group in body.get_locals_reader()? {
                let (n, ty) = group?;
                next_local += n;
                locals.push((n, self.val_type(ty)?));
            }
            // The fast path's locals come after the routine's, which keep their indices.
            locals.extend(found.routine.scratch_locals());
            let mut f = Function::new(locals);
            fast_path(&mut f, found.routine, next_local);
            // The original code follows as it was: the fast path's `if` is closed, so
            // its branch depths mean what they meant.
            let code_len = body
                .get_operators_reader()?
                .get_binary_reader()
                .bytes_remaining();
            let bytes = body.as_bytes();
            f.raw(bytes[bytes.len() - code_len..].iter().copied());
            code.function(&f);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmparser::{KnownCustom, Name, Payload};

    /// A module with musl-like byte loops for the three routines, named as wasi-libc
    /// names them, and an export for each so tests can call them.
    pub(crate) const LIBC: &str = r#"
      (module
        (memory (export "memory") 1 4)
        (func $memcpy (export "memcpy") (param i32 i32 i32) (result i32) (local i32)
          local.get 0 local.set 3
          block loop
            local.get 2 i32.eqz br_if 1
            local.get 0 local.get 1 i32.load8_u i32.store8
            local.get 0 i32.const 1 i32.add local.set 0
            local.get 1 i32.const 1 i32.add local.set 1
            local.get 2 i32.const 1 i32.sub local.set 2
            br 0
          end end
          local.get 3)
        (func $memmove (export "memmove") (param i32 i32 i32) (result i32)
          local.get 0 local.get 1 i32.le_u
          if (result i32)
            local.get 0 local.get 1 local.get 2 call $memcpy
          else
            block loop
              local.get 2 i32.eqz br_if 1
              local.get 2 i32.const 1 i32.sub local.set 2
              local.get 0 local.get 2 i32.add
              local.get 1 local.get 2 i32.add i32.load8_u i32.store8
              br 0
            end end
            local.get 0
          end)
        (func $memset (export "memset") (param i32 i32 i32) (result i32) (local i32)
          local.get 0 local.set 3
          block loop
            local.get 2 i32.eqz br_if 1
            local.get 0 local.get 1 i32.store8
            local.get 0 i32.const 1 i32.add local.set 0
            local.get 2 i32.const 1 i32.sub local.set 2
            br 0
          end end
          local.get 3)
        (func $memcmp (export "memcmp") (param i32 i32 i32) (result i32)
          block loop
            local.get 2 i32.eqz br_if 1
            local.get 0 i32.load8_u local.get 1 i32.load8_u i32.ne br_if 1
            local.get 0 i32.const 1 i32.add local.set 0
            local.get 1 i32.const 1 i32.add local.set 1
            local.get 2 i32.const 1 i32.sub local.set 2
            br 0
          end end
          local.get 2
          if (result i32)
            local.get 0 i32.load8_u local.get 1 i32.load8_u i32.sub
          else
            i32.const 0
          end)
        (func $strlen (export "strlen") (param i32) (result i32) (local i32)
          local.get 0 local.set 1
          block loop
            local.get 1 i32.load8_u i32.eqz br_if 1
            local.get 1 i32.const 1 i32.add local.set 1
            br 0
          end end
          local.get 1 local.get 0 i32.sub))
    "#;

    fn names(wasm: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            if let Payload::CustomSection(c) = payload.expect("parses")
                && let KnownCustom::Name(reader) = c.as_known()
            {
                for sub in reader {
                    if let Name::Function(map) = sub.expect("name subsection") {
                        for n in map {
                            out.push(n.expect("naming").name.to_owned());
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn leaf_routines_get_fast_paths() {
        let wasm = wat::parse_str(LIBC).expect("valid WAT");
        let out = apply(&wasm);
        assert!(matches!(out, Cow::Owned(_)), "the pass found the routines");
        wasmparser::Validator::new()
            .validate_all(&out)
            .expect("the rewritten module validates");
        assert_eq!(
            names(&out),
            ["memcpy", "memmove", "memset", "memcmp", "strlen"],
            "no function added"
        );
        let bulk = wasmprinter::print_bytes(&*out).expect("prints");
        assert_eq!(bulk.matches("memory.copy").count(), 2, "{bulk}");
        assert_eq!(bulk.matches("memory.fill").count(), 1, "{bulk}");
        assert_eq!(bulk.matches("i64.load").count(), 3, "{bulk}");
        // Applying the pass again changes nothing.
        assert!(matches!(apply(&out), Cow::Borrowed(_)));
    }

    /// Calls `name(args)` (`strlen` takes the first only) on a fresh instance of `wasm` whose memory starts as
    /// `image`, and returns the result (or the trap) and the memory afterwards.
    fn call(
        engine: &wasmtime::Engine,
        module: &wasmtime::Module,
        image: &[u8],
        name: &str,
        args: (i32, i32, i32),
    ) -> (Result<i32, String>, Vec<u8>) {
        let mut store = wasmtime::Store::new(engine, ());
        let instance = wasmtime::Instance::new(&mut store, module, &[]).expect("instantiates");
        let memory = instance
            .get_memory(&mut store, "memory")
            .expect("exports memory");
        memory.data_mut(&mut store)[..image.len()].copy_from_slice(image);
        let result = if name == "strlen" {
            instance
                .get_typed_func::<i32, i32>(&mut store, name)
                .expect("exported routine")
                .call(&mut store, args.0)
        } else {
            instance
                .get_typed_func::<(i32, i32, i32), i32>(&mut store, name)
                .expect("exported routine")
                .call(&mut store, args)
        };
        let result = result.map_err(|e| {
            e.downcast_ref::<wasmtime::Trap>()
                .map_or_else(|| format!("{e:#}"), |t| t.to_string())
        });
        (result, memory.data(&store).to_vec())
    }

    /// The rewritten routines return the same values, leave the same memory and trap
    /// alike, on disjoint, overlapping and out-of-bounds ranges of every size class, and
    /// `memcmp` on ranges that differ after long equal prefixes, and `strlen` on strings
    /// of every length, ending anywhere in the last word of memory or not at all.
    #[test]
    fn fast_paths_behave_exactly_as_the_originals() {
        let wasm = wat::parse_str(LIBC).expect("valid WAT");
        let rewritten = apply(&wasm).into_owned();
        assert_ne!(rewritten, wasm);
        let engine = wasmtime::Engine::default();
        let original = wasmtime::Module::new(&engine, &wasm).expect("compiles");
        let fast = wasmtime::Module::new(&engine, &rewritten).expect("compiles");
        let image: Vec<u8> = (0..PAGE).map(|i| (i * 7 + 3) as u8).collect();
        const PAGE: usize = 65536;
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut traps, mut overlaps, mut differing, mut lengths) = (0, 0, 0, 0);
        for i in 0..1000 {
            let name = ["memcpy", "memmove", "memset", "memcmp", "strlen"][i % 5];
            let n = [0, 1, 7, 16, 100, 4096, 70_000][(next() % 7) as usize];
            let dst = (next() % (PAGE as u64 + 64)) as i32;
            let src = match next() % 3 {
                // Near the destination, so ranges overlap often.
                0 => dst.wrapping_add((next() % 64) as i32 - 32),
                // The image repeats every 256 bytes: equal bytes for `memcmp` to skip.
                1 => dst.wrapping_add(256 * (1 + (next() % 8) as i32)),
                _ => (next() % PAGE as u64) as i32,
            };
            let b = if name == "memset" { next() as i32 } else { src };
            // `memcmp` of equal ranges gets one difference somewhere, or none.
            let mut image = image.clone();
            if name == "memcmp" && n > 0 && next() % 4 != 0 {
                let at = (dst as u32).wrapping_add((next() % n as u64) as u32) as usize;
                if let Some(byte) = image.get_mut(at) {
                    *byte ^= 1 + (next() % 255) as u8;
                }
            }
            let (mut dst, mut n) = (dst, n);
            if name == "strlen" {
                // Strings of every length up to 70 000, some running into the end of
                // memory without a NUL, some starting in its last 16 bytes.
                if next() % 3 == 0 {
                    dst = (PAGE - 1 - (next() % 16) as usize) as i32;
                    n = (next() % 16) as i32;
                }
                image.iter_mut().for_each(|b| *b |= 1);
                let end = dst.wrapping_add(n) as u32 as usize;
                if let Some(nul) = image.get_mut(end) {
                    *nul = 0;
                }
            }
            let want = call(&engine, &original, &image, name, (dst, b, n));
            let got = call(&engine, &fast, &image, name, (dst, b, n));
            assert_eq!(want.0, got.0, "{name}({dst}, {b}, {n}): result or trap");
            assert!(want.1 == got.1, "{name}({dst}, {b}, {n}): memory differs");
            traps += usize::from(want.0.is_err());
            overlaps +=
                usize::from(name == "memcpy" && n > 0 && (dst - src).unsigned_abs() < n as u32);
            let value = want.0.as_ref().ok();
            differing += usize::from(name == "memcmp" && n >= 16 && value.is_some_and(|r| *r != 0));
            lengths += usize::from(name == "strlen" && value.is_some_and(|r| *r >= 16));
        }
        // The test covers every kind of input the fast paths must hand back.
        assert!(
            traps > 20 && overlaps > 10 && differing > 20 && lengths > 50,
            "traps {traps}, overlaps {overlaps}, memcmp differences {differing}, \
             strlen results of 16 or more {lengths}"
        );
    }

    #[test]
    fn modules_without_routines_or_names_are_untouched() {
        for text in [
            "(module (memory 1) (func (export \"f\")))",
            // No name section: the routines cannot be recognised.
            "(module (memory 1) (func (param i32 i32 i32) (result i32) local.get 0))",
            // The right name with the wrong signature.
            "(module (memory 1) (func $memset (param i32 i32) (result i32) local.get 0))",
            // Two memories.
            "(module (memory 1) (memory 1) (func $memset (param i32 i32 i32) (result i32) local.get 0))",
            // A routine that calls the host.
            "(module (import \"env\" \"log\" (func $log)) (memory 1)
               (func $memset (param i32 i32 i32) (result i32) call $log local.get 0))",
        ] {
            let wasm = wat::parse_str(text).expect("valid WAT");
            assert!(matches!(apply(&wasm), Cow::Borrowed(_)), "{text}");
        }
        assert!(matches!(apply(b"\0asm garbage"), Cow::Borrowed(_)));
    }
}
