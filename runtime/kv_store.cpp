#include "runtime/kv_store.h"

#include <utility>

#include "kernels/common/error.h"

namespace kvcal {

std::uint8_t* page_pool::acquire(std::size_t bytes) {
  auto& list = free_[bytes];
  std::uint8_t* p;
  if (!list.empty()) {
    p = list.back();
    list.pop_back();
  } else {
    owned_.emplace_back(new std::uint8_t[bytes]);
    p = owned_.back().get();
    reserved_ += bytes;
    ++system_allocations_;
  }
  in_use_ += bytes;
  return p;
}

void page_pool::release(std::uint8_t* page, std::size_t bytes) {
  KVCAL_ASSERT(in_use_ >= bytes, "page_pool: releasing more than in use");
  in_use_ -= bytes;
  free_[bytes].push_back(page);
}

void page_pool::prewarm(std::size_t bytes, std::size_t count) {
  auto& list = free_[bytes];
  list.reserve(count);
  while (list.size() < count) {
    owned_.emplace_back(new std::uint8_t[bytes]);
    list.push_back(owned_.back().get());
    reserved_ += bytes;
    ++system_allocations_;
  }
}

paged_array::paged_array(page_pool* pool, std::size_t record_bytes, std::size_t records_per_page)
    : pool_(pool), record_bytes_(record_bytes), per_page_(records_per_page) {
  KVCAL_ASSERT(pool && record_bytes > 0 && records_per_page > 0, "paged_array: bad geometry");
}

paged_array::paged_array(paged_array&& o) noexcept {
  *this = std::move(o);
}

paged_array& paged_array::operator=(paged_array&& o) noexcept {
  if (this != &o) {
    clear();
    pool_ = o.pool_;
    record_bytes_ = o.record_bytes_;
    per_page_ = o.per_page_;
    pages_ = std::move(o.pages_);
    size_ = o.size_;
    first_live_ = o.first_live_;
    pages_held_ = o.pages_held_;
    o.pages_.clear();
    o.size_ = o.first_live_ = o.pages_held_ = 0;
  }
  return *this;
}

paged_array::~paged_array() {
  clear();
}

std::uint8_t* paged_array::append() {
  const std::size_t page = size_ / per_page_;
  if (page >= pages_.size()) pages_.resize(page + 1, nullptr);  // within reserve(): no allocation
  if (!pages_[page]) {
    pages_[page] = pool_->acquire(page_bytes());
    ++pages_held_;
  }
  std::uint8_t* r = pages_[page] + (size_ % per_page_) * record_bytes_;
  ++size_;
  return r;
}

std::uint8_t* paged_array::at(std::size_t i) {
  KVCAL_ASSERT(i >= first_live_ && i < size_, "paged_array: record ", i, " not live [", first_live_,
               ", ", size_, ")");
  return pages_[i / per_page_] + (i % per_page_) * record_bytes_;
}

const std::uint8_t* paged_array::at(std::size_t i) const {
  return const_cast<paged_array*>(this)->at(i);
}

void paged_array::release_before(std::size_t i) {
  KVCAL_ASSERT(i <= size_, "paged_array: release past the end");
  if (i <= first_live_) return;
  // Pages [first_live_ / per_page_, i / per_page_) have no live record left.
  for (std::size_t p = first_live_ / per_page_; p < i / per_page_; ++p) {
    if (pages_[p]) {
      pool_->release(pages_[p], page_bytes());
      pages_[p] = nullptr;
      --pages_held_;
    }
  }
  first_live_ = i;
}

void paged_array::clear() {
  for (auto& p : pages_) {
    if (p) pool_->release(p, page_bytes());
    p = nullptr;
  }
  pages_.clear();  // keeps capacity
  size_ = first_live_ = pages_held_ = 0;
}

void paged_array::reserve(std::size_t records) {
  pages_.reserve(records / per_page_ + 1);
}

std::size_t paged_array::pages_for(std::size_t n) const {
  return n == 0 ? 0 : (n + per_page_ - 1) / per_page_ + 1;
}

}  // namespace kvcal
