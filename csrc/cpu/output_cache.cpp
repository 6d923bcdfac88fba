// Large CPU output buffers reused across calls (cpu/output_cache.h).
#include "cpu/output_cache.h"

#include <c10/core/CPUAllocator.h>

#include <deque>
#include <memory>
#include <mutex>
#include <utility>

namespace dse::cpu {
namespace {

struct Block {
  c10::DataPtr memory;
  size_t bytes;
};

struct Cache {
  std::mutex mutex;
  std::deque<Block> idle;  // oldest first
  size_t idle_bytes = 0;
  size_t limit = kDefaultOutputCacheLimit;
  size_t hits = 0, misses = 0;

  // Drops the oldest idle blocks until at most `keep` bytes stay. Returns them, to be freed
  // outside the lock.
  std::deque<Block> trim(size_t keep) {
    std::deque<Block> dropped;
    while (idle_bytes > keep && !idle.empty()) {
      idle_bytes -= idle.front().bytes;
      dropped.push_back(std::move(idle.front()));
      idle.pop_front();
    }
    return dropped;
  }
};

// Never destroyed: tensors freed while the process exits still give their buffers back.
Cache& cache() {
  static Cache* c = new Cache();
  return *c;
}

void give_back(Block block) {
  Cache& c = cache();
  std::deque<Block> dropped;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (block.bytes > c.limit) {
      dropped.push_back(std::move(block));
    } else {
      dropped = c.trim(c.limit - block.bytes);
      c.idle_bytes += block.bytes;
      c.idle.push_back(std::move(block));
    }
  }
  // `dropped` frees its memory here, outside the lock
}

c10::DataPtr take(size_t bytes) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    for (auto it = c.idle.rbegin(); it != c.idle.rend(); ++it)  // the most recently used first
      if (it->bytes == bytes) {
        c10::DataPtr memory = std::move(it->memory);
        c.idle_bytes -= bytes;
        c.idle.erase(std::next(it).base());
        ++c.hits;
        return memory;
      }
    ++c.misses;
  }
  return c10::GetCPUAllocator()->allocate(bytes);
}

}  // namespace

at::Tensor empty_filled_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const at::TensorOptions contiguous = options.memory_format(at::MemoryFormat::Contiguous);
  if (options.device().type() != c10::DeviceType::CPU) return at::empty(sizes, contiguous);
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < kCachedOutputMinBytes) return at::empty(sizes, contiguous);
  // The tensor's storage owns the block through its deleter, which hands it back.
  auto block = std::make_shared<Block>(Block{take(bytes), bytes});
  void* data = block->memory.get();
  return at::from_blob(
      data, sizes, [block](void*) { give_back(std::move(*block)); }, options.device(c10::kCPU));
}

OutputCacheStats output_cache_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {c.idle_bytes, c.idle.size(), c.limit, c.hits, c.misses};
}

size_t set_output_cache_limit(size_t bytes) {
  Cache& c = cache();
  std::deque<Block> dropped;
  size_t previous;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    previous = c.limit;
    c.limit = bytes;
    dropped = c.trim(bytes);
  }
  return previous;
}

size_t release_output_cache() {
  Cache& c = cache();
  std::deque<Block> dropped;
  size_t freed;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    freed = c.idle_bytes;
    dropped = c.trim(0);
  }
  return freed;
}

}  // namespace dse::cpu
