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
