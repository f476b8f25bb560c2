#include "calibrate/rank_allocation.h"

#include <algorithm>
#include <cmath>
#include <queue>

#include "kernels/common/error.h"

namespace kvcal {

namespace {

void check_bits(int latent_bits) {
  KVCAL_CHECK(latent_bits == 16 || latent_bits == 8 || latent_bits == 4, "latent bits ",
              latent_bits, " is not one of 16, 8, 4");
}

std::int64_t dim_of(const std::vector<rank_block>& blocks) {
  KVCAL_CHECK(!blocks.empty(), "rank allocation: no blocks");
  const std::int64_t d = static_cast<std::int64_t>(blocks[0].eigenvalues.size());
  for (const auto& b : blocks)
    KVCAL_ASSERT(static_cast<std::int64_t>(b.eigenvalues.size()) == d, "blocks of mixed sizes");
  return d;
}

rank_plan finish(const std::vector<rank_block>& blocks, std::vector<int> ranks, int latent_bits) {
  rank_plan p;
  p.ranks = std::move(ranks);
  p.bits_per_token = plan_bits(blocks, p.ranks, latent_bits);
  p.discarded = discarded_variance(blocks, p.ranks);
  return p;
}

}  // namespace

std::int64_t latent_bits_per_token(int rank, int latent_bits) {
  return static_cast<std::int64_t>(rank) * latent_bits + (latent_bits < 16 ? 32 : 0);
}

std::int64_t plan_bits(const std::vector<rank_block>& blocks, const std::vector<int>& ranks,
                       int latent_bits) {
  std::int64_t bits = 0;
  for (size_t i = 0; i < blocks.size(); ++i)
    bits += blocks[i].heads * latent_bits_per_token(ranks[i], latent_bits);
  return bits;
}

double discarded_variance(const std::vector<rank_block>& blocks, const std::vector<int>& ranks) {
  double s = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const auto& ev = blocks[i].eigenvalues;
    for (size_t j = static_cast<size_t>(ranks[i]); j < ev.size(); ++j)
      s += static_cast<double>(blocks[i].heads) * std::max(ev[j], 0.0);
  }
  return s;
}

double explained_energy(const std::vector<double>& ev, int rank) {
  double total = 0, head = 0;
  for (size_t j = 0; j < ev.size(); ++j) {
    const double v = std::max(ev[j], 0.0);
    total += v;
    if (static_cast<int>(j) < rank) head += v;
  }
  return total > 0 ? head / total : 1.0;
}

rank_plan ranks_fixed(const std::vector<rank_block>& blocks, int rank, int latent_bits) {
  check_bits(latent_bits);
  const std::int64_t d = dim_of(blocks);
  KVCAL_CHECK(rank >= 1 && rank < d, "--rank ", rank, " must be in [1, head_dim) = [1, ", d, ")");
  return finish(blocks, std::vector<int>(blocks.size(), rank), latent_bits);
}

rank_plan ranks_for_energy(const std::vector<rank_block>& blocks, double energy, int latent_bits) {
  check_bits(latent_bits);
  const std::int64_t d = dim_of(blocks);
  KVCAL_CHECK(energy > 0 && energy <= 1, "--energy ", energy, " must be in (0, 1]");
  std::vector<int> ranks;
  for (const auto& b : blocks) {
    int r = 1;
    while (r < d && explained_energy(b.eigenvalues, r) < energy) ++r;
    ranks.push_back(r);
  }
  return finish(blocks, std::move(ranks), latent_bits);
}

rank_plan ranks_for_budget(const std::vector<rank_block>& blocks, double bytes_per_token,
                           int latent_bits) {
  check_bits(latent_bits);
  const std::int64_t d = dim_of(blocks);
  KVCAL_CHECK(bytes_per_token > 0 && std::isfinite(bytes_per_token), "--bytes-per-token ",
              bytes_per_token, " must be positive");
  const std::int64_t budget = static_cast<std::int64_t>(std::floor(bytes_per_token * 8 + 1e-9));
  std::vector<int> ranks(blocks.size(), 1);
  std::int64_t used = plan_bits(blocks, ranks, latent_bits);
  KVCAL_CHECK(used <= budget, "--bytes-per-token ", bytes_per_token, " is below the minimum ",
              static_cast<double>(used) / 8, " (rank 1 for each of the ", blocks.size(),
              " blocks at ", latent_bits, " latent bits)");
  // Max-heap on gain per bit of each block's next component; a component that does not fit is
  // dropped for good (later components of that block cost the same and gain less).
  struct cand {
    double gain_per_bit;
    size_t block;
    bool operator<(const cand& o) const {
      return gain_per_bit < o.gain_per_bit || (gain_per_bit == o.gain_per_bit && block > o.block);
    }
  };
  std::priority_queue<cand> heap;
  auto push = [&](size_t i) {
    if (ranks[i] >= d) return;
    const double lam = std::max(blocks[i].eigenvalues[static_cast<size_t>(ranks[i])], 0.0);
    heap.push({lam / latent_bits, i});  // heads x lambda / (heads x bits)
  };
  for (size_t i = 0; i < blocks.size(); ++i) push(i);
  while (!heap.empty()) {
    const cand c = heap.top();
    heap.pop();
    const std::int64_t cost = blocks[c.block].heads * latent_bits;
    if (used + cost > budget) continue;
    used += cost;
    ++ranks[c.block];
    push(c.block);
  }
  rank_plan p = finish(blocks, ranks, latent_bits);
  p.budget_bits = budget;
  // The best uniform rank within the same budget, for the report (and as a guard).
  for (int r = static_cast<int>(d); r >= 1; --r) {
    std::vector<int> u(blocks.size(), r);
    if (plan_bits(blocks, u, latent_bits) <= budget) {
      p.uniform_rank = r;
      p.uniform_discarded = discarded_variance(blocks, u);
      if (p.uniform_discarded < p.discarded) {  // only possible with mixed head counts
        const std::int64_t b = p.budget_bits;
        const double ud = p.uniform_discarded;
        p = finish(blocks, u, latent_bits);
        p.budget_bits = b;
        p.uniform_rank = r;
        p.uniform_discarded = ud;
      }
      break;
    }
  }
  KVCAL_ASSERT(p.bits_per_token <= budget, "rank allocation over budget");
  return p;
}

}  // namespace kvcal
