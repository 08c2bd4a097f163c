// Work cut into chunks that the calling thread and helpers scheduled on XLA's own intra-op
// pool claim from an atomic counter (no second thread pool to fight it for the cores). The
// caller only ever waits for chunks another thread has already claimed, so two kernels
// running at once can never wait on each other.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace tandem {

// chunk(c) for every c in [0, n_chunks), on the caller and up to `workers` - 1 helpers. A
// helper that starts after the last chunk was claimed finds nothing left and never calls
// `chunk`, so `chunk` may point to the caller's data: every call ends before this returns.
template <class Chunk>
void run_chunks(xla::ffi::ThreadPool& pool, int64_t workers, int64_t n_chunks, Chunk chunk) {
  struct Claims {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto claims = std::make_shared<Claims>();
  auto work = [claims, n_chunks, chunk] {
    for (int64_t c; (c = claims->next.fetch_add(1, std::memory_order_relaxed)) < n_chunks;) {
      chunk(c);
      claims->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min(workers - 1, n_chunks - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { work(); });
  work();
  while (claims->done.load(std::memory_order_acquire) < n_chunks) std::this_thread::yield();
}

}  // namespace tandem
