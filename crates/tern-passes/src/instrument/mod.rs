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

use crate::{PassError, defect, invalid, refuse};

mod inserter;
use inserter::*;
mod spill;
pub(crate) use spill::*;
#[cfg(test)]
mod tests;

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

/// What identifies the pass: its source, part of the migratable rewrite's cache key.
pub const IDENTITY: &str = concat!(
    include_str!("mod.rs"),
    include_str!("inserter.rs"),
    include_str!("spill.rs")
);

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
struct Survey {
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
/// [`PassError::Rewrite`] for an invalid module, one with exception handling, more
/// than one memory or a 64-bit memory, imported mutable globals, or data at the poll
/// flag's address.
pub fn instrument(wasm: &[u8]) -> Result<Vec<u8>, PassError> {
    instrument_with_safepoint(wasm).map(|(out, _)| out)
}

/// [`instrument`], also returning the function index of the `tern.safepoint` import.
pub fn instrument_with_safepoint(wasm: &[u8]) -> Result<(Vec<u8>, u32), PassError> {
    let survey = survey(wasm)?;
    let mut r = SafepointInserter::new(survey);
    let safepoint = r.safepoint();
    let mut module = Module::new();
    r.parse_core_module(&mut module, Parser::new(0), wasm)
        .map_err(|e| defect(format!("cannot re-encode: {e}")))?;
    let out = module.finish();
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(&out)
        .map_err(|e| {
            defect(format!(
                "the instrumented module is invalid (a Tern bug): {e}"
            ))
        })?;
    Ok((out, safepoint))
}

pub(crate) fn val_type(t: wasmparser::ValType) -> Result<ValType, PassError> {
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
) -> Result<Vec<Option<Sig>>, PassError> {
    let mut out = Vec::new();
    for group in reader {
        let group = group.map_err(invalid)?;
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

fn survey(wasm: &[u8]) -> Result<Survey, PassError> {
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(wasm)
        .map_err(|e| invalid(format!("not a valid WebAssembly module: {e}")))?;
    let mut s = Survey {
        data_clear_of_spills: true,
        ..Survey::default()
    };
    let mut memories = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(invalid)?;
        match payload {
            Payload::Version {
                encoding: wasmparser::Encoding::Component,
                ..
            } => return Err(refuse("components cannot be made migratable yet")),
            Payload::TypeSection(reader) => s.func_types.extend(signatures(reader)?),
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(invalid)?;
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
                    s.defined_func_types.push(ty.map_err(invalid)?);
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    let m = m.map_err(invalid)?;
                    if m.memory64 {
                        return Err(refuse("64-bit memories are not supported"));
                    }
                    memories += 1;
                }
            }
            Payload::TagSection(_) => return Err(exception_handling()),
            Payload::GlobalSection(reader) => {
                for (i, g) in reader.into_iter().enumerate() {
                    let g = g.map_err(invalid)?;
                    if g.ty.mutable {
                        s.mutable_globals.push(s.imported_globals + i as u32);
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for e in reader {
                    let e = e.map_err(invalid)?;
                    s.export_names.insert(e.name.to_owned());
                }
            }
            Payload::DataSection(reader) => {
                for d in reader {
                    let d = d.map_err(invalid)?;
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
                let mut ops = body.get_operators_reader().map_err(invalid)?;
                while !ops.eof() {
                    let op = ops.read().map_err(invalid)?;
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

fn exception_handling() -> PassError {
    refuse(
        "it uses WebAssembly exception handling (setjmp/longjmp or C++ exceptions), \
         which cannot be unwound at a safe point; rebuild without -fwasm-exceptions",
    )
}
