// y[rows, out] = x[rows, in] @ W[in, out] for a handful of rows, with W packed once into
// panels of 16 output columns: packed[p][i][c] = W[i, 16 p + c] (zero past `out`).
//
// Why: XLA:CPU's general GEMM re-packs W on every call, which costs more than the product
// itself when x has a handful of rows (decoding). Here each panel streams through once while
// the accumulators of a tile of rows stay in registers, so every weight is read from memory
// once per call whatever the row count (tiles after the first re-read it from cache), and
// the pass runs at memory bandwidth.
//
// Exactness: every output element is one fused multiply-add chain over i = 0..in-1 from 0,
// in the same order on every code path (AVX-512, AVX2+FMA, scalar std::fma) and for every
// row count, so a k-row call equals k one-row calls bit for bit.
//
// Threads: the panels are cut into chunks that the calling thread and helpers on XLA's own
// pool claim (chunks.h).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>

#include "chunks.h"
#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 16;  // output columns per panel

enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

int best_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kScalar;
}

const int kBestIsa = best_isa();
std::atomic<int> g_isa{kBestIsa};

// One tile: R rows of x against NP neighbouring panels (panels `n_in * 16` floats apart);
// `cols` (<= 16 NP) of their columns are stored. Several panels at once give the core
// independent FMA chains and memory streams; a software prefetch runs ahead of each stream.
struct Tile {
  const float* x;  // first row of the tile, rows `ldx` apart
  int64_t ldx;
  const float* panel;  // [NP][in][16]
  int64_t n_in;
  float* y;  // first row, first column of the first panel; rows `ldy` apart
  int64_t ldy;
  int64_t cols;
};

constexpr int64_t kPrefetch = 64 * kPanel;  // floats ahead of each stream: 4 KiB

template <int NP, int R>
void tile_scalar(const Tile& t) {
  float acc[R][NP * kPanel] = {};
  for (int64_t i = 0; i < t.n_in; ++i)
    for (int r = 0; r < R; ++r) {
      const float xv = t.x[r * t.ldx + i];
      for (int p = 0; p < NP; ++p) {
        const float* w = t.panel + p * t.n_in * kPanel + i * kPanel;
        for (int c = 0; c < kPanel; ++c)
          acc[r][p * kPanel + c] = std::fma(xv, w[c], acc[r][p * kPanel + c]);
      }
    }
  for (int r = 0; r < R; ++r) std::copy(acc[r], acc[r] + t.cols, t.y + r * t.ldy);
}

#if defined(__x86_64__)
template <int NP, int R>
__attribute__((target("avx2,fma"))) void tile_avx2(const Tile& t) {
  __m256 acc[R][2 * NP];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < t.n_in; ++i) {
    __m256 w[2 * NP];
    for (int p = 0; p < NP; ++p) {
      const float* src = t.panel + p * t.n_in * kPanel + i * kPanel;
      _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetch), _MM_HINT_T0);
      w[2 * p] = _mm256_loadu_ps(src);
      w[2 * p + 1] = _mm256_loadu_ps(src + 8);
    }
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_broadcast_ss(t.x + r * t.ldx + i);
      for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm256_fmadd_ps(xv, w[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(32) float buf[NP * kPanel];
    for (int j = 0; j < 2 * NP; ++j) _mm256_store_ps(buf + 8 * j, acc[r][j]);
    std::copy(buf, buf + t.cols, t.y + r * t.ldy);
  }
}

template <int NP, int R>
__attribute__((target("avx512f"))) void tile_avx512(const Tile& t) {
  __m512 acc[R][NP];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_ps();
  for (int64_t i = 0; i < t.n_in; ++i) {
    __m512 w[NP];
    for (int p = 0; p < NP; ++p) {
      const float* src = t.panel + p * t.n_in * kPanel + i * kPanel;
      _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetch), _MM_HINT_T0);
      w[p] = _mm512_loadu_ps(src);
    }
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(t.x[r * t.ldx + i]);
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(xv, w[p], acc[r][p]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < NP; ++p) {
      const int64_t c = std::min<int64_t>(kPanel, t.cols - p * kPanel);
      const __mmask16 mask = c == kPanel ? 0xFFFF : static_cast<__mmask16>((1u << c) - 1);
      _mm512_mask_storeu_ps(t.y + r * t.ldy + p * kPanel, mask, acc[r][p]);
    }
}
#endif

// Register tiles per instruction set: (panels, most rows), chosen by the call's row count so
// that the accumulators fill most registers and every weight is read once from memory.
// AVX-512 (32 registers, one per row and panel): 4 panels x <= 6 rows, or 2 panels x <= 12
// rows. AVX2 (16 registers, two per row and panel): 2 panels x <= 3 rows, or 1 panel x <= 6
// rows. Scalar code is there for correctness only.
struct Shape {
  int panels, rows;
};
Shape tile_shape(int isa, int64_t rows) {
  if (isa == kAvx512) return rows <= 6 ? Shape{4, 6} : Shape{2, 12};
  if (isa == kAvx2) return rows <= 3 ? Shape{2, 3} : Shape{1, 6};
  return Shape{1, 4};
}

#define TANDEM_ROWS_6(FN, NP, rows, t) \
  case 1: return FN<NP, 1>(t);         \
  case 2: return FN<NP, 2>(t);         \
  case 3: return FN<NP, 3>(t);         \
  case 4: return FN<NP, 4>(t);         \
  case 5: return FN<NP, 5>(t);         \
  case 6: return FN<NP, 6>(t);
#define TANDEM_ROWS_12(FN, NP, rows, t) \
  TANDEM_ROWS_6(FN, NP, rows, t)        \
  case 7: return FN<NP, 7>(t);          \
  case 8: return FN<NP, 8>(t);          \
  case 9: return FN<NP, 9>(t);          \
  case 10: return FN<NP, 10>(t);        \
  case 11: return FN<NP, 11>(t);        \
  case 12: return FN<NP, 12>(t);

// A tile of `rows` rows (<= the shape's) over `np` panels (the shape's, or 1 at the end).
void run_tile(int isa, int np, int rows, const Tile& t) {
#if defined(__x86_64__)
  if (isa == kAvx512) {
    if (np == 4) switch (rows) { TANDEM_ROWS_6(tile_avx512, 4, rows, t) }
    if (np == 2) switch (rows) { TANDEM_ROWS_12(tile_avx512, 2, rows, t) }
    switch (rows) { TANDEM_ROWS_12(tile_avx512, 1, rows, t) }
  }
  if (isa == kAvx2) {
    if (np == 2) switch (rows) { TANDEM_ROWS_6(tile_avx2, 2, rows, t) }
    switch (rows) { TANDEM_ROWS_6(tile_avx2, 1, rows, t) }
  }
#endif
  switch (rows) { TANDEM_ROWS_6(tile_scalar, 1, rows, t) }
}

struct Job {
  const float* x;
  const float* packed;
  float* y;
  int64_t rows, n_in, n_out, panels, per_chunk, n_chunks;
  int isa;

  // Chunk c covers panel groups [c * per_chunk, (c + 1) * per_chunk) of `shape.panels` each.
  void chunk(int64_t c) const {
    const Shape shape = tile_shape(isa, rows);
    const int64_t p_end = std::min(panels, (c + 1) * per_chunk * shape.panels);
    for (int64_t p = c * per_chunk * shape.panels; p < p_end;) {
      const int np = p + shape.panels <= panels ? shape.panels : 1;
      const int64_t cols = std::min(np * kPanel, n_out - p * kPanel);
      for (int64_t r = 0; r < rows; r += shape.rows) {
        const Tile t{x + r * n_in, n_in, packed + p * n_in * kPanel, n_in,
                     y + r * n_out + p * kPanel, n_out, cols};
        run_tile(isa, np, static_cast<int>(std::min<int64_t>(shape.rows, rows - r)), t);
      }
      p += np;
    }
  }
};

ffi::Error packed_matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::Buffer<ffi::F32> packed, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), pd = packed.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || pd.size() != 3 || yd.size() != 2 || pd[2] != kPanel || pd[1] != xd[1] ||
      yd[0] != xd[0] || yd[1] > pd[0] * kPanel || yd[1] <= (pd[0] - 1) * kPanel)
    return ffi::Error::InvalidArgument("packed_matmul: x [rows, in], packed [ceil(out/16), in, 16]");
  Job job;
  job.x = x.typed_data();
  job.packed = packed.typed_data();
  job.y = y->typed_data();
  job.rows = xd[0];
  job.n_in = xd[1];
  job.n_out = yd[1];
  job.panels = pd[0];
  job.isa = g_isa.load(std::memory_order_relaxed);
  // ~4 chunks per worker, each at least 32 KiB of weights, so that a worker that starts late
  // (a pool thread waking up) still gets a share and the first one does not wait alone.
  const int64_t workers = std::max<int64_t>(1, pool.num_threads());
  const Shape shape = tile_shape(job.isa, job.rows);
  const int64_t group_bytes = shape.panels * job.n_in * kPanel * 4;
  const int64_t groups = (job.panels + shape.panels - 1) / shape.panels;
  job.per_chunk = std::max<int64_t>({1, (32 << 10) / group_bytes, groups / (4 * workers)});
  job.n_chunks = (groups + job.per_chunk - 1) / job.per_chunk;
  tandem::run_chunks(pool, workers, job.n_chunks, [&job](int64_t c) { job.chunk(c); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TandemPackedMatmul, packed_matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// The instruction set the kernel uses: 0 scalar, 1 AVX2+FMA, 2 AVX-512. Setting asks for one
// (tests compare the paths); it never goes above what this CPU has.
extern "C" int tandem_kernel_best_isa() { return kBestIsa; }
extern "C" int tandem_kernel_isa() { return g_isa.load(); }
extern "C" int tandem_kernel_set_isa(int isa) {
  g_isa.store(std::clamp(isa, 0, kBestIsa));
  return g_isa.load();
}
