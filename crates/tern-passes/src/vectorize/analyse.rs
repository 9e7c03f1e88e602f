//! Reading one innermost loop into a [`LoopPlan`]: its exit test, its `i32` addresses as
//! affine forms, its float values as a DAG, its streams, and whether its two halves pair
//! as lanes ([`Lanes::Statements`]).

use super::*;

/// Reads a loop body (without its `br_if`) into a [`LoopPlan`], or `None` when it is
/// not a loop the pass vectorises.
pub(super) fn analyse(
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
pub(super) fn next_element(a: &Stream, b: &Stream, elem: Elem) -> bool {
    (b.addr == a.addr && b.offset == a.offset.wrapping_add(u64::from(elem.bytes())))
        || (b.offset == a.offset && b.addr == a.addr.add(&Affine::konst(elem.bytes())))
}

/// Where stream `b` starts relative to `a`, when both have the same address operand
/// but for a constant: the distance is the same in every iteration.
pub(super) fn static_distance(a: &Stream, b: &Stream) -> Option<i64> {
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
pub(super) fn pair_statements(plan: &LoopPlan) -> Option<Vec<(usize, usize)>> {
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
pub(super) fn pair_cost(
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
