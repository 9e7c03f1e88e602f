//! The unwind pass over one function body: every call that may reach a safe point gets
//! its unwind check and its record, and the resume clone gets the landings a rewind
//! enters by (`dispatch`, `enter`) and the prologue that pops its record.

use super::*;

/// A function's validator, handed back for its allocations.
pub(super) type Validated = wasmparser::FuncValidator<wasmparser::ValidatorResources>;

/// The frame the analysis keeps for each open control construct.
pub(super) struct Open {
    pub(super) op: usize,
    pub(super) level: usize,
    pub(super) dead: bool,
    pub(super) marked: bool,
    pub(super) stack: Vec<ValType>,
    pub(super) sig: Sig,
    pub(super) is_if: bool,
    pub(super) lo: u32,
    pub(super) then_hi: Option<u32>,
}

impl FunctionPass<'_> {
    /// The operand stack of the current frame, bottom first; `None` in unreachable code.
    pub(super) fn frame_stack(
        v: &wasmparser::FuncValidator<wasmparser::ValidatorResources>,
    ) -> Result<Option<Vec<ValType>>, PassError> {
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
    pub(super) fn observe(
        &mut self,
        v: &wasmparser::FuncValidator<wasmparser::ValidatorResources>,
        i: usize,
        op: &Operator<'_>,
    ) -> Result<(), PassError> {
        let mut open = std::mem::take(&mut self.open);
        let r = self.observe_with(v, i, op, &mut open);
        self.open = open;
        r
    }

    pub(super) fn observe_with(
        &mut self,
        v: &wasmparser::FuncValidator<wasmparser::ValidatorResources>,
        i: usize,
        op: &Operator<'_>,
        w: &mut Vec<Open>,
    ) -> Result<(), PassError> {
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
pub(super) struct Entered {
    pub(super) temps: Vec<(u32, ValType)>,
    pub(super) before: HashMap<ValType, usize>,
    pub(super) after_below: HashMap<ValType, usize>,
}

impl FunctionPass<'_> {
    pub(super) fn op(&mut self, i: &Instruction<'_>) {
        emit(&mut self.out, i);
    }

    /// The output depth of original branch depth `depth`.
    pub(super) fn depth(&self, depth: u32) -> u32 {
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
    pub(super) fn entry_range(&self, entry: usize) -> (u32, u32) {
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
    pub(super) fn entry_stack(&self, entry: usize) -> Vec<ValType> {
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
    pub(super) fn open_level(
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
    pub(super) fn dispatch(&mut self, entries: &[usize], saved: &[u32]) {
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
    pub(super) fn enter(&mut self, i: usize) -> Entered {
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
    pub(super) fn body(
        &mut self,
        ops: &[Operator<'_>],
        live_after: &[Vec<u32>],
    ) -> Result<(), PassError> {
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
                        list.push(self.depth(t.map_err(invalid)?));
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
                        .map_err(|e| defect(format!("cannot re-encode: {e}")))?;
                    self.op(&instruction);
                }
            }
        }
        Ok(())
    }

    /// Writes site operator `i`: its call with its arguments back from temps, the
    /// unwind check after it, and the level's values back under its results.
    pub(super) fn site(
        &mut self,
        i: usize,
        op: &Operator<'_>,
        e: Entered,
        live_after: &[Vec<u32>],
    ) -> Result<(), PassError> {
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
            .map_err(|e| defect(format!("cannot re-encode: {e}")))?;
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
        self.op(&Instruction::I32Load(memarg(self.m.memories, 0)));
        self.op(&Instruction::LocalTee(self.ptr_local));
        self.op(&Instruction::I32Const((size + 4) as i32));
        self.op(&Instruction::I32Add);
        self.op(&Instruction::GlobalGet(self.g.data));
        self.op(&Instruction::I32Load(memarg(self.m.memories, 4)));
        self.op(&Instruction::I32GtU);
        self.op(&Instruction::If(BlockType::Empty));
        self.op(&Instruction::Unreachable);
        self.op(&Instruction::End);
        for (l, ty, o) in &record.slots {
            self.op(&Instruction::LocalGet(self.ptr_local));
            self.op(&Instruction::LocalGet(*l));
            self.op(&store_value(*ty, memarg(self.m.memories, *o)));
        }
        self.op(&Instruction::LocalGet(self.ptr_local));
        self.op(&Instruction::I32Const(s as i32));
        self.op(&Instruction::I32Store(memarg(self.m.memories, size)));
        self.op(&Instruction::GlobalGet(self.g.data));
        self.op(&Instruction::LocalGet(self.ptr_local));
        self.op(&Instruction::I32Const((size + 4) as i32));
        self.op(&Instruction::I32Add);
        self.op(&Instruction::I32Store(memarg(self.m.memories, 0)));
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
    pub(super) fn prologue(&mut self) {
        let n = self.records.len() as u32;
        if n == 0 {
            return;
        }
        self.op(&Instruction::GlobalGet(self.g.state));
        self.op(&Instruction::I32Const(REWINDING));
        self.op(&Instruction::I32Eq);
        self.op(&Instruction::If(BlockType::Empty));
        self.op(&Instruction::GlobalGet(self.g.data));
        self.op(&Instruction::I32Load(memarg(self.m.memories, 0)));
        self.op(&Instruction::I32Const(4));
        self.op(&Instruction::I32Sub);
        self.op(&Instruction::LocalTee(self.ptr_local));
        self.op(&Instruction::I32Load(memarg(self.m.memories, 0)));
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
                self.op(&load_value(*ty, memarg(self.m.memories, *offset)));
                self.op(&Instruction::LocalSet(*l));
            }
            self.op(&Instruction::Br(n - 1 - k as u32));
        }
        self.op(&Instruction::End); // $out
        self.op(&Instruction::GlobalGet(self.g.data));
        self.op(&Instruction::LocalGet(self.ptr_local));
        self.op(&Instruction::I32Store(memarg(self.m.memories, 0)));
        self.op(&Instruction::End);
    }
}
