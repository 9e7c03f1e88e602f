//! Writing a [`LoopPlan`] as Wasm: the checks in front of the loop (trip count, bounds,
//! disjoint streams) and the vector loop itself.

use super::*;

/// Locals the vector code adds to a function.
pub(super) struct Locals {
    pub(super) next: u32,
    pub(super) new: Vec<(u32, ValType)>,
}

impl Locals {
    fn add(&mut self, ty: ValType) -> u32 {
        self.new.push((1, ty));
        self.next += 1;
        self.next - 1
    }
}

pub(super) fn mem_arg(offset: u64, elem: Elem) -> MemArg {
    // The alignment hint is the element's: no more than any of these accesses may claim.
    MemArg {
        offset,
        align: elem.bytes().trailing_zeros(),
        target: wasm_encoder::MemArgTarget::Memory(0),
        ordering: None,
    }
}

/// Pushes `a`, computed from the locals' current values.
pub(super) fn affine(f: &mut Function, a: &Affine) {
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
pub(super) fn emit(f: &mut Function, plan: &LoopPlan, locals: &mut Locals) {
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
pub(super) fn by_statement(
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
pub(super) fn next_vector(f: &mut Function, plan: &LoopPlan, iterations: u32, k: u32) {
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
pub(super) fn pack_pair(
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
pub(super) fn scalar(f: &mut Function, plan: &LoopPlan, n: usize) {
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

pub(super) fn count_uses(nodes: &[Node], n: usize, uses: &mut [u32]) {
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
pub(super) struct Vector<'a> {
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
