//! Which locals of a function are live at the header of each of its loops.
//!
//! The pre-pass ([`crate::instrument`]) stores exactly these locals to linear memory
//! before its out-of-line safe-point call and reloads them after it, so that no value
//! stays live *across* the call. A value live across a call must sit in a callee-saved
//! register or on the stack; x86-64 has no callee-saved vector registers, so before this
//! Cranelift kept loop-carried floats (a dot product's accumulator) on the stack inside
//! the hot loop, reloading them every iteration (PolyBench's lu ran 2.4× slower).
//!
//! This is classic backward liveness over basic blocks. Wasm's structured control flow
//! makes the graph easy to build in one pass over the operators: a `block` or `if` is
//! branched to at its end, a `loop` at its header. No crate does liveness on raw Wasm
//! operators, so it is written here.

use wasmparser::Operator;

/// Functions with more than this many (blocks × locals) bits are left without spills:
/// the analysis would cost more than it saves.
const MAX_BITS: usize = 1 << 26;

#[derive(Clone, Copy)]
enum Frame {
    /// A `block` or an `if`: branches go to `end`; `cond` is the block that ended with
    /// the `if`'s condition (for an `if` without `else`, it also falls to `end`).
    Forward { end: usize, cond: Option<usize> },
    /// A `loop`: branches go to its header.
    Loop { header: usize, end: usize },
}

impl Frame {
    fn target(&self) -> usize {
        match *self {
            Frame::Forward { end, .. } => end,
            Frame::Loop { header, .. } => header,
        }
    }
}

#[derive(Default, Clone)]
struct Block {
    succs: Vec<usize>,
}

struct Sets {
    words: usize,
    gen_: Vec<u64>,
    kill: Vec<u64>,
}

impl Sets {
    fn new(words: usize) -> Sets {
        Sets {
            words,
            gen_: Vec::new(),
            kill: Vec::new(),
        }
    }
    fn push(&mut self) {
        self.gen_.extend(std::iter::repeat_n(0, self.words));
        self.kill.extend(std::iter::repeat_n(0, self.words));
    }
    fn use_(&mut self, b: usize, local: u32) {
        let (w, bit) = (b * self.words + local as usize / 64, 1u64 << (local % 64));
        if self.kill[w] & bit == 0 {
            self.gen_[w] |= bit;
        }
    }
    fn def(&mut self, b: usize, local: u32) {
        let (w, bit) = (b * self.words + local as usize / 64, 1u64 << (local % 64));
        self.kill[w] |= bit;
    }
}

/// For each `loop` of a function body (its operators `ops`), in the order the loops
/// open, the indices of the locals live at its header (sorted). `n_locals` counts parameters and declared locals.
/// `None` when the function is too large to analyse or uses branches this analysis does
/// not model (the GC proposal's `br_on_*`); the caller then spills nothing.
pub(crate) fn loop_headers(ops: &[Operator<'_>], n_locals: u32) -> Option<Vec<Vec<u32>>> {
    analyse(ops, n_locals, &[]).map(|(headers, _)| headers)
}

/// For each of `points` (indices into `ops`, ascending), the locals live just before
/// that operator runs (sorted). `None` as for [`loop_headers`].
pub(crate) fn live_before(
    ops: &[Operator<'_>],
    n_locals: u32,
    points: &[usize],
) -> Option<Vec<Vec<u32>>> {
    analyse(ops, n_locals, points).map(|(_, at)| at)
}

/// Sorted local indices, one set per program point.
type LiveSets = Vec<Vec<u32>>;

/// Liveness at every loop header and before every one of `points`.
fn analyse(ops: &[Operator<'_>], n_locals: u32, points: &[usize]) -> Option<(LiveSets, LiveSets)> {
    let words = (n_locals as usize).div_ceil(64).max(1);
    let mut blocks: Vec<Block> = Vec::new();
    let mut sets = Sets::new(words);
    let new_block = |blocks: &mut Vec<Block>, sets: &mut Sets| {
        blocks.push(Block::default());
        sets.push();
        blocks.len() - 1
    };
    let mut cur = new_block(&mut blocks, &mut sets);
    let exit = usize::MAX;
    let mut frames: Vec<Frame> = vec![Frame::Forward {
        end: exit,
        cond: None,
    }];
    let mut headers: Vec<usize> = Vec::new();
    let edge = |blocks: &mut Vec<Block>, from: usize, to: usize| {
        if to != exit {
            blocks[from].succs.push(to);
        }
    };
    let target = |frames: &[Frame], depth: u32| -> Option<usize> {
        let i = frames.len().checked_sub(1 + depth as usize)?;
        Some(frames[i].target())
    };
    let mut point_blocks: Vec<usize> = Vec::with_capacity(points.len());
    let mut next_point = points.iter().peekable();
    for (i, op) in ops.iter().enumerate() {
        // A point starts a block of its own, so its live-in set is the answer.
        while next_point.next_if(|&&p| p <= i).is_some() {
            let b = new_block(&mut blocks, &mut sets);
            edge(&mut blocks, cur, b);
            cur = b;
            point_blocks.push(b);
        }
        match *op {
            Operator::LocalGet { local_index } => sets.use_(cur, local_index),
            Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                sets.def(cur, local_index);
            }
            Operator::Block { .. } => {
                let end = new_block(&mut blocks, &mut sets);
                frames.push(Frame::Forward { end, cond: None });
            }
            Operator::If { .. } => {
                let end = new_block(&mut blocks, &mut sets);
                let cond = cur;
                cur = new_block(&mut blocks, &mut sets);
                edge(&mut blocks, cond, cur);
                frames.push(Frame::Forward {
                    end,
                    cond: Some(cond),
                });
            }
            Operator::Else => {
                let Some(Frame::Forward {
                    end,
                    cond: Some(cond),
                }) = frames.pop()
                else {
                    return None;
                };
                edge(&mut blocks, cur, end);
                cur = new_block(&mut blocks, &mut sets);
                edge(&mut blocks, cond, cur);
                frames.push(Frame::Forward { end, cond: None });
            }
            Operator::Loop { .. } => {
                let header = new_block(&mut blocks, &mut sets);
                let end = new_block(&mut blocks, &mut sets);
                edge(&mut blocks, cur, header);
                cur = header;
                headers.push(header);
                frames.push(Frame::Loop { header, end });
            }
            Operator::End => {
                let frame = frames.pop()?;
                let end = match frame {
                    Frame::Forward { end, cond } => {
                        if let Some(cond) = cond {
                            edge(&mut blocks, cond, end);
                        }
                        end
                    }
                    Frame::Loop { end, .. } => end,
                };
                edge(&mut blocks, cur, end);
                if end == exit {
                    break;
                }
                cur = end;
            }
            Operator::Br { relative_depth } => {
                let t = target(&frames, relative_depth)?;
                edge(&mut blocks, cur, t);
                cur = new_block(&mut blocks, &mut sets);
            }
            Operator::BrIf { relative_depth } => {
                let t = target(&frames, relative_depth)?;
                edge(&mut blocks, cur, t);
                let next = new_block(&mut blocks, &mut sets);
                edge(&mut blocks, cur, next);
                cur = next;
            }
            Operator::BrTable { ref targets } => {
                for depth in targets
                    .targets()
                    .chain(std::iter::once(Ok(targets.default())))
                {
                    let t = target(&frames, depth.ok()?)?;
                    edge(&mut blocks, cur, t);
                }
                cur = new_block(&mut blocks, &mut sets);
            }
            Operator::Return
            | Operator::Unreachable
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => {
                cur = new_block(&mut blocks, &mut sets);
            }
            Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Delegate { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. } => return None,
            _ => {}
        }
        if blocks.len().saturating_mul(words * 64) > MAX_BITS {
            return None;
        }
    }

    // Backward dataflow to a fixed point: live_in = gen ∪ (live_out − kill). Blocks are
    // numbered roughly in program order, so visiting them in reverse converges fast.
    let mut live_in = vec![0u64; blocks.len() * words];
    let mut out = vec![0u64; words];
    let mut changed = true;
    while changed {
        changed = false;
        for b in (0..blocks.len()).rev() {
            out.iter_mut().for_each(|w| *w = 0);
            for &s in &blocks[b].succs {
                for (o, w) in out.iter_mut().zip(&live_in[s * words..(s + 1) * words]) {
                    *o |= *w;
                }
            }
            for (i, o) in out.iter().enumerate() {
                let w = b * words + i;
                let new = sets.gen_[w] | (o & !sets.kill[w]);
                if new != live_in[w] {
                    live_in[w] = new;
                    changed = true;
                }
            }
        }
    }
    let live_at = |b: usize| -> Vec<u32> {
        (0..n_locals)
            .filter(|&l| live_in[b * words + l as usize / 64] & (1 << (l % 64)) != 0)
            .collect()
    };
    // Points past the end of the body see nothing live.
    let mut at: Vec<Vec<u32>> = point_blocks.iter().map(|&b| live_at(b)).collect();
    at.resize(points.len(), Vec::new());
    Some((headers.iter().map(|&h| live_at(h)).collect(), at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Liveness at each loop header of the only function of `text`, which has two
    /// parameters.
    fn headers(text: &str) -> Vec<Vec<u32>> {
        crate::test_support::with_only_function(text, |ops, declared| {
            loop_headers(ops, 2 + declared).expect("analysable")
        })
    }

    #[test]
    fn loop_carried_and_later_used_locals_are_live_temporaries_are_not() {
        // $acc is carried around the loop, $i is its counter, $t a temporary set before
        // use in each iteration, $after is only set after the loop, $p1 is read after it.
        let live = headers(
            r#"(module (func (param $p0 i32) (param $p1 i32) (result i32)
                (local $i i32) (local $acc i32) (local $t i32) (local $after i32)
                (loop $l
                  (local.set $t (i32.mul (local.get $i) (local.get $i)))
                  (local.set $acc (i32.add (local.get $acc) (local.get $t)))
                  (local.set $i (i32.add (local.get $i) (i32.const 1)))
                  (br_if $l (i32.lt_u (local.get $i) (local.get $p0))))
                (local.set $after (local.get $p1))
                (i32.add (local.get $acc) (local.get $after))))"#,
        );
        assert_eq!(live, vec![vec![0, 1, 2, 3]]);
    }

    #[test]
    fn branches_out_of_nested_blocks_and_ifs_are_followed() {
        // The inner loop's header: $x is read on the `if` path that leaves both loops;
        // $y only before the outer loop; $z is redefined before every read.
        let live = headers(
            r#"(module (func (param $a i32) (param $b i32)
                (local $x i32) (local $y i32) (local $z i32)
                (drop (local.get $y))
                (block $out
                  (loop $outer
                    (loop $inner
                      (if (local.get $a)
                        (then (drop (local.get $x)) (br $out))
                        (else (local.set $z (i32.const 1)) (drop (local.get $z))))
                      (br_if $inner (local.get $b)))
                    (br $outer)))))"#,
        );
        assert_eq!(live, vec![vec![0, 1, 2], vec![0, 1, 2]]);
    }

    #[test]
    fn code_after_an_unconditional_branch_adds_nothing() {
        let live = headers(
            r#"(module (func (param $a i32) (param $b i32) (local $dead i32)
                (loop $l
                  (br_if $l (local.get $a))
                  (return)
                  (drop (local.get $dead)))))"#,
        );
        assert_eq!(live, vec![vec![0]]);
    }
}
