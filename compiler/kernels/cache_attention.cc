// Decode-time grouped-query attention read straight from a KV cache:
//   out[b, t, h] = sum over slots s <= positions[b, t] of softmax_s(scale * q[b, t, h] . k[b, s, j])
//                  * v[b, s, j],   j = h / (H / K) the query head's kv head,
// with q [B, T, H, E], k and v [B, S, K, E] (the cache), positions [B, T] int32.
//
// Why: XLA:CPU scores every one of the S slots (the masked ones too) and first transposes each
// layer's whole cache for its dots; in a SmolLM2 step that was ~8 ms of ~25. Here each query
// row reads only its visible slots, in the cache's own layout (a kv head's slots stay in
// cache for the other query rows of its group).
//
// Exactness: every query row is computed on its own, in the same order whatever T, G or the
// instruction set: a score is a 16-lane FMA chain over E followed by a fixed pairwise sum,
// the softmax runs in slot order, and each output element is an FMA chain over slots in slot
// order. So a T-row call equals T one-row calls bit for bit (a verify pass reproduces the
// one-token steps), and the AVX-512, AVX2 and scalar builds of the loop give the same bits.
//
// A row with no visible slot (a position below 0) gets the mean of all S values, as the XLA
// path's softmax over a fully masked row does. Threads: a one-token step's attention runs on
// the calling thread (waking a pool thread costs more); a verify pass or a prefill splits its
// query rows over XLA's own pool.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "chunks.h"
#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

extern "C" int tandem_kernel_isa();  // packed_matmul.cc: 0 scalar, 1 AVX2+FMA, 2 AVX-512

namespace {

constexpr int kLanes = 16;

struct Shape {
  int64_t batch, tokens, heads, dim, slots, kv_heads;
};

// The two inner loops of a query row, once per instruction set, all with the same arithmetic:
//   score_row: for each slot s < n, out[s] = scale * dot(q, key s), the dot as 16 lanes (lane l
//     an FMA chain over the elements i = l mod 16, lanes past `dim` adding 0 * 0), then summed
//     pairwise: lanes l += l + 8, l += l + 4, l += l + 2, l += l + 1.
//   mix_row: acc[e] = an FMA chain over slots s = 0 .. n-1 of p[s] * value s [e], from 0.
// Keys and values of slot s start at base + s * stride.
void score_row_scalar(const float* q, const float* keys, int64_t stride, int64_t n,
                      int64_t dim, float scale, float* out) {
  for (int64_t s = 0; s < n; ++s) {
    const float* key = keys + s * stride;
    float acc[kLanes] = {};
    for (int64_t i = 0; i < dim; i += kLanes)
      for (int l = 0; l < kLanes; ++l)
        acc[l] = i + l < dim ? std::fma(q[i + l], key[i + l], acc[l]) : std::fma(0.0f, 0.0f, acc[l]);
    for (int w = kLanes / 2; w >= 1; w /= 2)
      for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
    out[s] = acc[0] * scale;
  }
}

void mix_row_scalar(const float* p, const float* values, int64_t stride, int64_t n,
                    int64_t dim, float* acc) {
  for (int64_t e = 0; e < dim; ++e) {
    float a = 0.0f;
    for (int64_t s = 0; s < n; ++s) a = std::fma(p[s], values[s * stride + e], a);
    acc[e] = a;
  }
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) inline __mmask16 lanes_left(int64_t left) {
  return left >= kLanes ? 0xFFFF : static_cast<__mmask16>((1u << std::max<int64_t>(left, 0)) - 1);
}

__attribute__((target("avx512f"))) inline float sum_lanes(__m512 acc) {
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)));
}

// Slots four at a time: four independent dot products in flight hide the FMA and sum latency.
__attribute__((target("avx512f"))) void score_row_avx512(const float* q, const float* keys,
                                                         int64_t stride, int64_t n, int64_t dim,
                                                         float scale, float* out) {
  constexpr int kSlots = 4;
  for (int64_t s0 = 0; s0 < n; s0 += kSlots) {
    const int64_t m = std::min<int64_t>(kSlots, n - s0);
    __m512 acc[kSlots] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                          _mm512_setzero_ps()};
    for (int64_t i = 0; i < dim; i += kLanes) {
      const __mmask16 mask = lanes_left(dim - i);
      const __m512 qv = _mm512_maskz_loadu_ps(mask, q + i);
      for (int j = 0; j < m; ++j)
        acc[j] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(mask, keys + (s0 + j) * stride + i),
                                 acc[j]);
    }
    for (int j = 0; j < m; ++j) out[s0 + j] = sum_lanes(acc[j]) * scale;
  }
}

// Four chunks of 16 elements at a time: four independent FMA chains over the slots.
__attribute__((target("avx512f"))) void mix_row_avx512(const float* p, const float* values,
                                                       int64_t stride, int64_t n, int64_t dim,
                                                       float* acc) {
  for (int64_t e = 0; e < dim; e += 4 * kLanes) {
    const __mmask16 m[4] = {lanes_left(dim - e), lanes_left(dim - e - 16),
                            lanes_left(dim - e - 32), lanes_left(dim - e - 48)};
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
    for (int64_t s = 0; s < n; ++s) {
      const __m512 ps = _mm512_set1_ps(p[s]);
      const float* v = values + s * stride + e;
      for (int c = 0; c < 4; ++c)
        a[c] = _mm512_fmadd_ps(ps, _mm512_maskz_loadu_ps(m[c], v + c * kLanes), a[c]);
    }
    for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(acc + e + c * kLanes, m[c], a[c]);
  }
}

__attribute__((target("avx2,fma"))) inline __m256 load8(const float* p, int64_t left) {
  if (left >= 8) return _mm256_loadu_ps(p);
  alignas(32) float buf[8] = {};
  for (int64_t l = 0; l < left; ++l) buf[l] = p[l];
  return _mm256_load_ps(buf);
}

__attribute__((target("avx2,fma"))) void score_row_avx2(const float* q, const float* keys,
                                                       int64_t stride, int64_t n, int64_t dim,
                                                       float scale, float* out) {
  constexpr int kSlots = 4;
  for (int64_t s0 = 0; s0 < n; s0 += kSlots) {
    const int64_t m = std::min<int64_t>(kSlots, n - s0);
    __m256 lo[kSlots], hi[kSlots];  // lanes 0-7 and 8-15 of each slot's dot
    for (int j = 0; j < kSlots; ++j) lo[j] = hi[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < dim; i += kLanes) {
      const __m256 q_lo = load8(q + i, dim - i), q_hi = load8(q + i + 8, dim - i - 8);
      for (int j = 0; j < m; ++j) {
        const float* key = keys + (s0 + j) * stride + i;
        lo[j] = _mm256_fmadd_ps(q_lo, load8(key, dim - i), lo[j]);
        hi[j] = _mm256_fmadd_ps(q_hi, load8(key + 8, dim - i - 8), hi[j]);
      }
    }
    for (int j = 0; j < m; ++j) {
      const __m256 h = _mm256_add_ps(lo[j], hi[j]);
      __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
      x = _mm_add_ps(x, _mm_movehl_ps(x, x));
      out[s0 + j] = _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1))) * scale;
    }
  }
}

__attribute__((target("avx2,fma"))) void mix_row_avx2(const float* p, const float* values,
                                                     int64_t stride, int64_t n, int64_t dim,
                                                     float* acc) {
  int64_t e = 0;
  for (; e + 32 <= dim; e += 32) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    for (int64_t s = 0; s < n; ++s) {
      const __m256 ps = _mm256_set1_ps(p[s]);
      const float* v = values + s * stride + e;
      for (int c = 0; c < 4; ++c) a[c] = _mm256_fmadd_ps(ps, _mm256_loadu_ps(v + 8 * c), a[c]);
    }
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(acc + e + 8 * c, a[c]);
  }
  if (e < dim) mix_row_scalar(p, values + e, stride, n, dim - e, acc + e);
}
#endif

using ScoreRow = void (*)(const float*, const float*, int64_t, int64_t, int64_t, float, float*);
using MixRow = void (*)(const float*, const float*, int64_t, int64_t, int64_t, float*);

// Query rows [first, last) (row = (b * T + t) * H + h), each alone, so a row's bits never
// depend on the others or on who computes it: scores over its visible slots, the softmax in
// slot order, the weighted sum of values.
template <ScoreRow score_row, MixRow mix_row>
void attend_rows(const Shape& d, const float* q, const float* k, const float* v,
                 const int32_t* positions, float* out, float scale, int64_t first,
                 int64_t last) {
  const int64_t e_dim = d.dim, stride = d.kv_heads * e_dim, g_per = d.heads / d.kv_heads;
  std::vector<float> p(d.slots), acc(e_dim);
  for (int64_t row = first; row < last; ++row) {
    const int64_t b = row / (d.tokens * d.heads), bt = row / d.heads, j = row % d.heads / g_per;
    const float* keys = k + (b * d.slots * d.kv_heads + j) * e_dim;  // slot s: + s * stride
    const float* values = v + (b * d.slots * d.kv_heads + j) * e_dim;
    const int64_t n = std::min<int64_t>(positions[bt] + 1, d.slots);
    float* o = out + row * e_dim;
    if (n <= 0) {  // no visible slot: the mean of every slot's value, as XLA's softmax
      std::fill(p.begin(), p.end(), 1.0f);
      mix_row(p.data(), values, stride, d.slots, e_dim, o);
      for (int64_t e = 0; e < e_dim; ++e) o[e] /= static_cast<float>(d.slots);
      continue;
    }
    score_row(q + row * e_dim, keys, stride, n, e_dim, scale, p.data());
    const float top = *std::max_element(p.begin(), p.begin() + n);
    float total = 0.0f;
    for (int64_t s = 0; s < n; ++s) {
      p[s] = std::exp(p[s] - top);
      total += p[s];
    }
    mix_row(p.data(), values, stride, n, e_dim, acc.data());
    for (int64_t e = 0; e < e_dim; ++e) o[e] = acc[e] / total;
  }
}

using RowsFn = void (*)(const Shape&, const float*, const float*, const float*, const int32_t*,
                        float*, float, int64_t, int64_t);

RowsFn rows_fn(int isa) {  // the mat-mul's instruction-set switch: one choice for both
#if defined(__x86_64__)
  if (isa == 2) return attend_rows<score_row_avx512, mix_row_avx512>;
  if (isa == 1) return attend_rows<score_row_avx2, mix_row_avx2>;
#endif
  return attend_rows<score_row_scalar, mix_row_scalar>;
}

// Below this many (row, slot) pairs a call runs on the calling thread alone: a one-token
// step's attention (~10 us a layer) is cheaper than waking a pool thread.
constexpr int64_t kParallelWork = 8192;

ffi::Error cache_attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                           ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                           ffi::Buffer<ffi::S32> positions, ffi::ResultBuffer<ffi::F32> out,
                           float scale) {
  const auto qd = q.dimensions(), kd = k.dimensions(), pd = positions.dimensions();
  const bool ok = qd.size() == 4 && kd.size() == 4 && pd.size() == 2 &&
                  v.dimensions() == kd && out->dimensions() == qd && kd[0] == qd[0] &&
                  kd[3] == qd[3] && kd[2] > 0 && qd[2] % kd[2] == 0 && pd[0] == qd[0] &&
                  pd[1] == qd[1] && kd[1] > 0;
  if (!ok)
    return ffi::Error::InvalidArgument(
        "cache_attention: q [B, T, H, E], k and v [B, S, K, E] with K dividing H, "
        "positions [B, T]");
  const Shape d{qd[0], qd[1], qd[2], qd[3], kd[1], kd[2]};
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const int32_t* pp = positions.typed_data();
  float* op = out->typed_data();
  const RowsFn rows = rows_fn(tandem_kernel_isa());
  const int64_t n_rows = d.batch * d.tokens * d.heads;
  int64_t work = 0;  // (row, slot) pairs
  for (int64_t i = 0; i < d.batch * d.tokens; ++i)
    work += d.heads * std::clamp<int64_t>(pp[i] + 1, 1, d.slots);
  const int64_t workers = work < kParallelWork ? 1 : std::max<int64_t>(1, pool.num_threads());
  const int64_t per_chunk = std::max<int64_t>(1, n_rows / (4 * workers));
  tandem::run_chunks(pool, workers, (n_rows + per_chunk - 1) / per_chunk, [&](int64_t c) {
    rows(d, qp, kp, vp, pp, op, scale, c * per_chunk, std::min(n_rows, (c + 1) * per_chunk));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TandemCacheAttention, cache_attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
