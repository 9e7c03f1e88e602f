//! Innermost loops whose trip count is a small constant, which the pre-pass leaves
//! without a poll: their enclosing loop's poll is reached within a bounded number of
//! operators anyway.
//!
//! This matters beyond the poll's own load and branch: a loop with a poll can reach the
//! safe-point call, and a value live across that call is one Cranelift keeps on the
//! stack (x86-64 has no callee-saved vector registers), or spills and reloads around
//! it. A loop left alone compiles exactly as before.
//!
//! The shape recognised is the counted loop compilers emit for `for (i = C0; i < B;
//! i += S)` after loop rotation:
//!
//! ```text
//! i32.const C0  local.set $i
//! loop                              ;; no other branch back to the header
//!   …body: no loop, no call, no bulk memory operation, $i never written…
//!   local.get $i  i32.const S  i32.add  local.tee $i
//!   i32.const B  i32.<cmp>  br_if 0
//! end
//! ```
//!
//! The trip count is found by running the counter itself (`C0 + S`, `+ S`, … until the
//! comparison fails), so every comparison and wrap-around is exact; a loop that does not
//! stop within [`MAX_TRIPS`] keeps its poll.

use std::collections::HashSet;

use wasmparser::Operator;

/// Loops with more iterations keep their poll.
pub const MAX_TRIPS: u32 = 4096;

/// Trip count × operators in the body above which a loop keeps its poll: the time to
/// the next safe point stays well under a millisecond.
pub const MAX_WORK: u64 = 1 << 18;

/// Ordinals (in opening order among all loops of the function) of the loops of `ops`
/// that need no poll.
pub(crate) fn loops(ops: &[Operator<'_>]) -> HashSet<usize> {
    let mut out = HashSet::new();
    let mut ordinal = 0;
    for (i, op) in ops.iter().enumerate() {
        let Operator::Loop { blockty } = op else {
            continue;
        };
        let this = ordinal;
        ordinal += 1;
        if *blockty != wasmparser::BlockType::Empty {
            continue;
        }
        let Some(end) = matching_end(ops, i) else {
            continue;
        };
        let body = &ops[i + 1..end];
        if let Some(trips) = trip_count(&ops[..i], body)
            && u64::from(trips) * body.len() as u64 <= MAX_WORK
        {
            out.insert(this);
        }
    }
    out
}

/// Index of the `end` that closes the construct opened at `open`.
fn matching_end(ops: &[Operator<'_>], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, op) in ops.iter().enumerate().skip(open + 1) {
        match op {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. } => depth += 1,
            Operator::End if depth == 0 => return Some(j),
            Operator::End => depth -= 1,
            _ => {}
        }
    }
    None
}

/// How many times `body` runs, when it is a counted loop entered right after `before`.
fn trip_count(before: &[Operator<'_>], body: &[Operator<'_>]) -> Option<u32> {
    let [
        ..,
        Operator::I32Const { value: init },
        Operator::LocalSet { local_index: set },
    ] = before
    else {
        return None;
    };
    let n = body.len();
    let tail = body.get(n.checked_sub(7)?..)?;
    let [
        Operator::LocalGet { local_index: get },
        Operator::I32Const { value: step },
        Operator::I32Add,
        Operator::LocalTee { local_index: tee },
        Operator::I32Const { value: bound },
        cmp,
        Operator::BrIf { relative_depth: 0 },
    ] = tail
    else {
        return None;
    };
    let iv = *set;
    if *get != iv || *tee != iv {
        return None;
    }
    let compare = comparison(cmp)?;
    // Nothing else in the body may write the counter, branch back to the header, loop,
    // call, or run for a length given at run time.
    let mut depth = 0u32;
    for op in &body[..n - 7] {
        match op {
            Operator::LocalSet { local_index } | Operator::LocalTee { local_index }
                if *local_index == iv =>
            {
                return None;
            }
            Operator::Block { .. } | Operator::If { .. } => depth += 1,
            Operator::End => depth = depth.checked_sub(1)?,
            Operator::Br { relative_depth } | Operator::BrIf { relative_depth }
                if *relative_depth == depth =>
            {
                return None;
            }
            Operator::BrTable { targets } => {
                for t in targets
                    .targets()
                    .chain(std::iter::once(Ok(targets.default())))
                {
                    if t.ok()? == depth {
                        return None;
                    }
                }
            }
            Operator::Loop { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Call { .. }
            | Operator::CallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. }
            | Operator::MemoryFill { .. }
            | Operator::MemoryCopy { .. }
            | Operator::MemoryInit { .. }
            | Operator::TableFill { .. }
            | Operator::TableCopy { .. }
            | Operator::TableInit { .. } => return None,
            _ => {}
        }
    }
    let mut v = *init;
    for trips in 1..=MAX_TRIPS {
        v = v.wrapping_add(*step);
        if !compare(v, *bound) {
            return Some(trips);
        }
    }
    None
}

/// The `i32` comparison `op` computes, as a function of (counter, bound).
fn comparison(op: &Operator<'_>) -> Option<fn(i32, i32) -> bool> {
    Some(match op {
        Operator::I32Ne => |a, b| a != b,
        Operator::I32Eq => |a, b| a == b,
        Operator::I32LtS => |a, b| a < b,
        Operator::I32LeS => |a, b| a <= b,
        Operator::I32GtS => |a, b| a > b,
        Operator::I32GeS => |a, b| a >= b,
        Operator::I32LtU => |a, b| (a as u32) < (b as u32),
        Operator::I32LeU => |a, b| (a as u32) <= (b as u32),
        Operator::I32GtU => |a, b| (a as u32) > (b as u32),
        Operator::I32GeU => |a, b| (a as u32) >= (b as u32),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounded loop ordinals of the only function in `text`.
    fn bounded(text: &str) -> HashSet<usize> {
        crate::test_support::with_only_function(text, |ops, _| loops(ops))
    }

    fn counted(init: i32, step: i32, cmp: &str, bound: i32, body: &str) -> String {
        format!(
            r#"(module (memory 1) (func (local $i i32) (local $x i32)
                (i32.const {init}) (local.set $i)
                (loop $l
                  {body}
                  (local.get $i) (i32.const {step}) (i32.add) (local.tee $i)
                  (i32.const {bound}) ({cmp}) (br_if 0))))"#
        )
    }

    #[test]
    fn counted_loops_within_the_limits_need_no_poll() {
        let add = "(local.set $x (i32.add (local.get $x) (i32.load (local.get $i))))";
        assert_eq!(bounded(&counted(0, 16, "i32.ne", 3280, add)), [0].into());
        assert_eq!(bounded(&counted(0, 1, "i32.lt_s", 1000, add)), [0].into());
        assert_eq!(bounded(&counted(100, -1, "i32.gt_s", 0, add)), [0].into());
    }

    #[test]
    fn loops_that_may_run_long_keep_their_poll() {
        let add = "(local.set $x (i32.add (local.get $x) (local.get $i)))";
        // Never equal: 3 is not a multiple of 16 away from 0 (the counter wraps forever).
        assert!(bounded(&counted(0, 16, "i32.ne", 3, add)).is_empty());
        // Too many trips.
        assert!(bounded(&counted(0, 1, "i32.lt_u", 1_000_000, add)).is_empty());
        // The counter is written in the body.
        let bump = "(local.set $i (i32.const 0))";
        assert!(bounded(&counted(0, 1, "i32.lt_s", 10, bump)).is_empty());
        // A `continue` back to the header.
        let cont = "(br_if $l (local.get $x))";
        assert!(bounded(&counted(0, 1, "i32.lt_s", 10, cont)).is_empty());
        // A call, a nested loop, a bulk copy of run-time length.
        for body in [
            "(call 0)",
            "(loop (br_if 0 (local.get $x)))",
            "(memory.fill (i32.const 0) (i32.const 0) (local.get $x))",
        ] {
            assert!(
                bounded(&counted(0, 1, "i32.lt_s", 10, body)).is_empty(),
                "{body}"
            );
        }
    }

    #[test]
    fn an_unknown_start_keeps_the_poll() {
        let text = r#"(module (func (param $n i32) (local $i i32)
            (local.set $i (local.get $n))
            (loop
              (local.get $i) (i32.const 1) (i32.add) (local.tee $i)
              (i32.const 10) (i32.lt_s) (br_if 0))))"#;
        assert!(bounded(text).is_empty());
    }
}
