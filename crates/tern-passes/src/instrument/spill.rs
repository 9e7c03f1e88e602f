//! Where a safe point's live locals go in linear memory ([`SPILL_START`]..[`SPILL_END`]),
//! and the loads and stores of one value, shared with the unwind pass's records.

use super::*;

/// A local an out-of-line safe point stores before its call and reloads after it, so
/// that its value is not live across the call (see [`crate::liveness`]).
pub(super) struct Spill {
    pub(super) local: u32,
    pub(super) ty: ValType,
    pub(super) offset: u32,
}

impl Spill {
    pub(super) fn memarg(&self) -> MemArg {
        MemArg {
            offset: u64::from(self.offset),
            align: value_size(self.ty).map_or(0, u32::trailing_zeros),
            target: MemArgTarget::Memory(0),
            ordering: None,
        }
    }

    pub(super) fn store(&self) -> Instruction<'static> {
        store_value(self.ty, self.memarg())
    }

    pub(super) fn load(&self) -> Instruction<'static> {
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
pub(super) fn spill_layout(types: &[ValType], live: &[u32]) -> Vec<Spill> {
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
pub(super) fn shifted(frames: &[bool], depth: u32) -> u32 {
    let top = frames.len().saturating_sub(1);
    let target = top.saturating_sub(depth as usize);
    let wrapped = frames
        .get(target + 1..)
        .map_or(0, |inner| inner.iter().filter(|w| **w).count());
    depth + 3 * wrapped as u32
}
