// Paged storage of the compressed KV cache: fixed-size pages from a pool, and arrays of
// fixed-size records laid over them.
//
// A record is what a codec writes at once: one token (fp16 vector, per-token quantized row, PCA
// latent) or one block of tokens (per-channel quantization group). A paged_array keeps
// `records_per_page` records per page and a page table indexed by page number; pages whose
// records are all released (tokens that left the fp16 window for a codec, or — later — evicted
// tokens) go back to the pool and are reused without touching the system allocator. Page sizes
// differ between arrays (the page is sized in tokens, its bytes depend on the method), so the pool
// keeps one free list per page size.
//
// Memory is measured, not computed: page_pool counts the bytes of pages in use (held), of every
// page it ever obtained (reserved), and how many times it called the system allocator.
//
//   kvcal::page_pool pool;
//   kvcal::paged_array a(&pool, /*record_bytes=*/256, /*records_per_page=*/64);
//   std::uint8_t* r = a.append();          // [256] bytes for record a.size() - 1
//   a.release_before(64);                  // records 0..63 dropped, their page back in the pool
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

namespace kvcal {

class page_pool {
 public:
  page_pool() = default;
  page_pool(const page_pool&) = delete;
  page_pool& operator=(const page_pool&) = delete;

  std::uint8_t* acquire(std::size_t bytes);
  void release(std::uint8_t* page, std::size_t bytes);
  // Makes sure `count` pages of `bytes` are free (allocating what is missing), so that the next
  // acquires do not reach the system allocator.
  void prewarm(std::size_t bytes, std::size_t count);

  std::size_t bytes_in_use() const { return in_use_; }
  std::size_t bytes_reserved() const { return reserved_; }
  std::size_t system_allocations() const { return system_allocations_; }

 private:
  std::vector<std::unique_ptr<std::uint8_t[]>> owned_;
  std::map<std::size_t, std::vector<std::uint8_t*>> free_;  // page size -> free pages
  std::size_t in_use_ = 0, reserved_ = 0, system_allocations_ = 0;
};

class paged_array {
 public:
  paged_array() = default;
  paged_array(page_pool* pool, std::size_t record_bytes, std::size_t records_per_page);
  paged_array(paged_array&& o) noexcept;
  paged_array& operator=(paged_array&& o) noexcept;
  paged_array(const paged_array&) = delete;
  paged_array& operator=(const paged_array&) = delete;
  ~paged_array();

  // A new record at index size() (its bytes undefined); takes a page from the pool when needed.
  std::uint8_t* append();
  // Record i, first_live() <= i < size().
  std::uint8_t* at(std::size_t i);
  const std::uint8_t* at(std::size_t i) const;
  // Drops records [first_live(), i); pages left without a live record go back to the pool.
  void release_before(std::size_t i);
  // Drops everything (pages back to the pool), keeps the page table's capacity.
  void clear();
  // Capacity of the page table for `records` records (the pages themselves come from the pool).
  void reserve(std::size_t records);
  // Pages needed to hold records [first, first + n) in the worst case alignment.
  std::size_t pages_for(std::size_t n) const;

  std::size_t size() const { return size_; }
  std::size_t first_live() const { return first_live_; }
  std::size_t record_bytes() const { return record_bytes_; }
  std::size_t page_bytes() const { return record_bytes_ * per_page_; }
  std::size_t pages_held() const { return pages_held_; }
  std::size_t bytes_held() const { return pages_held_ * page_bytes(); }
  std::size_t bytes_used() const { return (size_ - first_live_) * record_bytes_; }

 private:
  page_pool* pool_ = nullptr;
  std::size_t record_bytes_ = 0, per_page_ = 1;
  std::vector<std::uint8_t*> pages_;  // page number -> page (null once released)
  std::size_t size_ = 0, first_live_ = 0, pages_held_ = 0;
};

}  // namespace kvcal
