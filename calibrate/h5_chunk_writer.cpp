#include "calibrate/h5_chunk_writer.h"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "kernels/common/error.h"

namespace kvcal {

int h5_default_write_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 2 ? static_cast<int>(hw) - 1 : 1;
}

namespace {

// One whole chunk to store directly.
struct chunk_task {
  h5_dataset* ds = nullptr;
  std::int64_t row0 = 0;
  const void* src = nullptr;
  std::int64_t slot = -1;  // index among the encoded chunks, -1: stored as it is
};

struct encoded {
  std::vector<std::uint8_t> bytes;
  std::uint32_t mask = 0;
};

// Workers encode chunks in order into a ring of 2 x threads slots; the caller consumes them in
// order.
class encoder_pool {
 public:
  encoder_pool(const std::vector<const chunk_task*>& tasks, int threads)
      : tasks_(tasks),
        slots_(std::min(std::max<std::size_t>(2, 2 * static_cast<std::size_t>(threads)),
                        tasks.size())),
        ready_(tasks.size(), 0) {
    const int n =
        static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(threads), tasks.size()));
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
  }
  ~encoder_pool() {
    {
      std::lock_guard<std::mutex> l(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Waits for encoded chunk i (in order); valid until release(i).
  const encoded& get(std::size_t i) {
    std::unique_lock<std::mutex> l(m_);
    cv_.wait(l, [&] { return ready_[i] || err_; });
    if (err_) std::rethrow_exception(err_);
    return slots_[i % slots_.size()];
  }
  void release(std::size_t i) {
    {
      std::lock_guard<std::mutex> l(m_);
      released_ = i + 1;
    }
    cv_.notify_all();
  }

 private:
  void work() {
    for (;;) {
      std::size_t i = 0;
      {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [&] {
          return stop_ || err_ || next_ >= tasks_.size() || next_ < released_ + slots_.size();
        });
        if (stop_ || err_ || next_ >= tasks_.size()) return;
        i = next_++;
      }
      try {
        const chunk_task& t = *tasks_[i];
        encoded& e = slots_[i % slots_.size()];
        e.mask = t.ds->filters().encode(t.src, t.ds->chunk_bytes(), e.bytes);
        std::lock_guard<std::mutex> l(m_);
        ready_[i] = 1;
      } catch (...) {
        std::lock_guard<std::mutex> l(m_);
        if (!err_) err_ = std::current_exception();
      }
      cv_.notify_all();
    }
  }

  const std::vector<const chunk_task*>& tasks_;
  std::vector<encoded> slots_;
  std::vector<char> ready_;
  std::size_t next_ = 0, released_ = 0;
  bool stop_ = false;
  std::exception_ptr err_;
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;  // last: started once the members they use exist
};

}  // namespace

void h5_write_blocks(const std::vector<h5_row_block>& blocks, int threads) {
  KVCAL_CHECK(threads >= 1, "write threads must be >= 1, not ", threads);
  // Plan: whole chunks of every block, and the rows left for H5Dwrite.
  std::vector<chunk_task> tasks;
  std::vector<h5_row_block> rest;
  std::int64_t n_encoded = 0;
  for (const h5_row_block& b : blocks) {
    if (b.n == 0) continue;
    h5_dataset& d = *b.dataset;
    KVCAL_CHECK(b.row0 >= 0 && b.n > 0, d.path(), ": bad row range");
    if (b.row0 + b.n > d.rows()) d.set_rows(b.row0 + b.n);
    const std::int64_t whole = d.direct_chunks(b.row0, b.n);
    const std::size_t cb = d.chunk_bytes();
    for (std::int64_t c = 0; c < whole; ++c) {
      chunk_task t;
      t.ds = &d;
      t.row0 = b.row0 + c * d.chunk_rows();
      t.src = static_cast<const std::uint8_t*>(b.data) + static_cast<std::size_t>(c) * cb;
      if (d.filters().any()) t.slot = n_encoded++;
      tasks.push_back(t);
    }
    const std::int64_t done = whole * d.chunk_rows();
    if (done < b.n) {
      const std::size_t row_bytes =
          static_cast<std::size_t>(d.row_elems()) * h5_elem_size(d.dtype());
      rest.push_back(
          {&d, b.row0 + done, b.n - done,
           static_cast<const std::uint8_t*>(b.data) + static_cast<std::size_t>(done) * row_bytes});
    }
  }
  std::vector<const chunk_task*> to_encode;
  for (const auto& t : tasks)
    if (t.slot >= 0) to_encode.push_back(&t);
  encoder_pool pool(to_encode, threads);
  for (const auto& r : rest) r.dataset->write_rows(r.row0, r.n, r.data);  // overlaps the workers
  for (const auto& t : tasks) {
    if (t.slot < 0) {
      t.ds->write_chunk(t.row0, t.src, t.ds->chunk_bytes(), 0);
      continue;
    }
    const auto i = static_cast<std::size_t>(t.slot);
    const encoded& e = pool.get(i);
    t.ds->write_chunk(t.row0, e.bytes.data(), e.bytes.size(), e.mask);
    pool.release(i);
  }
}

}  // namespace kvcal
