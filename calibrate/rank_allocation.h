// Choosing the PCA rank of every block (layer x KV head x K|V, or layer x K|V when heads share a
// basis): a fixed rank, the smallest rank reaching an explained-energy fraction, or a byte budget
// per token split across all blocks.
//
// Byte accounting is the preset's (docs/formats/preset.md, "Byte accounting"): a token of a block
// at rank r with latent_bits b costs r * b bits, plus 32 bits (fp16 scale + fp16 zero) when b < 16,
// once per KV head using the block. The budget is met exactly in bits: the chosen ranks never cost
// more than floor(8 * bytes_per_token) bits per token, and no further component fits.
//
//   std::vector<kvcal::rank_block> blocks = ...;   // eigenvalues descending, heads sharing
//   kvcal::rank_plan p = kvcal::ranks_for_budget(blocks, 1024.0, 8);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvcal {

struct rank_block {
  std::vector<double> eigenvalues;  // descending (negative rounding noise counts as 0)
  std::int64_t heads = 1;           // KV heads whose tokens use this block's basis
  std::string name;                 // for messages: "v layer 3 head 1"
};

struct rank_plan {
  std::vector<int> ranks;           // one per block, 1..d
  std::int64_t bits_per_token = 0;  // what the ranks cost, all blocks and heads
  std::int64_t budget_bits = 0;     // budget (0 when none was given)
  double discarded = 0;             // sum over blocks of heads x (sum of eigenvalues past rank)
  double uniform_discarded = -1;    // same for the best uniform rank within the budget (-1: n/a)
  int uniform_rank = 0;
};

// Bits per token of one block at `rank` (rank >= 1) for one KV head.
std::int64_t latent_bits_per_token(int rank, int latent_bits);
std::int64_t plan_bits(const std::vector<rank_block>& blocks, const std::vector<int>& ranks,
                       int latent_bits);
double discarded_variance(const std::vector<rank_block>& blocks, const std::vector<int>& ranks);
// Explained-energy fraction of the first `rank` eigenvalues (1 for an all-zero spectrum).
double explained_energy(const std::vector<double>& eigenvalues, int rank);

// rank must be in [1, d); errors name the value and head_dim.
rank_plan ranks_fixed(const std::vector<rank_block>& blocks, int rank, int latent_bits);
// energy in (0, 1]: per block the smallest rank with explained energy >= energy.
rank_plan ranks_for_energy(const std::vector<rank_block>& blocks, double energy, int latent_bits);
// Greedy on eigenvalue per latent bit, starting from rank 1 everywhere; errors when even rank 1
// everywhere does not fit (naming the minimum). Never worse than the best uniform rank.
rank_plan ranks_for_budget(const std::vector<rank_block>& blocks, double bytes_per_token,
                           int latent_bits);

}  // namespace kvcal
