#include "runtime/eviction/policy.h"

#include <algorithm>
#include <cmath>

#include "kernels/common/error.h"
#include "runtime/eviction/cluster.h"
#include "runtime/eviction/h2o.h"
#include "runtime/eviction/learned.h"
#include "runtime/eviction/lru.h"
#include "runtime/eviction/window.h"

namespace kvcal {

eviction_policy::eviction_policy(const layer_recipe& lr, std::int64_t window)
    : lr_(lr), window_(window) {}

std::int64_t eviction_policy::retained(std::int64_t seen, int head) const {
  const token_policy& p = lr_.policy;
  if (p.kind == token_policy_kind::full) return seen;
  if (p.kind == token_policy_kind::window) return std::min(seen, p.sinks + p.recent);
  const token_budget& b = lr_.budget_of(static_cast<std::size_t>(head));
  if (b.kind == budget_kind::none) return seen;  // learned with a threshold only
  std::int64_t budget = b.tokens;
  if (b.kind == budget_kind::retain)  // floor, as the byte accounting
    budget = static_cast<std::int64_t>(std::floor(b.retain * static_cast<double>(seen)));
  return std::min(seen, std::max<std::int64_t>(1, budget));
}

std::int64_t eviction_policy::sinks() const {
  return lr_.policy.kind == token_policy_kind::window ? lr_.policy.sinks : 0;
}

std::int64_t eviction_policy::recent(std::int64_t R) const {
  return std::min(R, std::max<std::int64_t>(1, window_));
}

double eviction_policy::on_append(int, std::int64_t, const float*, const float*,
                                  std::int64_t) const {
  return 0.0;
}

void eviction_policy::observe(const float*, std::int64_t, std::int64_t, std::int64_t,
                              double*) const {}

namespace {

// `full` with a guard: keeps every token; cumulative attention ranks the guard.
class full_policy : public h2o_policy {
 public:
  using h2o_policy::h2o_policy;
  std::int64_t recent(std::int64_t R) const override { return eviction_policy::recent(R); }
};

}  // namespace

std::unique_ptr<eviction_policy> make_policy(const layer_recipe& lr, int layer, std::int64_t window,
                                             const std::vector<tensor_view>& tensors,
                                             int n_kv_heads, int head_dim,
                                             const std::string& source) {
  switch (lr.policy.kind) {
    case token_policy_kind::full:
      return std::make_unique<full_policy>(lr, window);
    case token_policy_kind::window:
      return std::make_unique<window_policy>(lr, window);
    case token_policy_kind::h2o:
      return std::make_unique<h2o_policy>(lr, window);
    case token_policy_kind::lru:
      return std::make_unique<lru_policy>(lr, window);
    case token_policy_kind::cluster:
      return std::make_unique<cluster_policy>(lr, window);
    case token_policy_kind::learned:
      return std::make_unique<learned_policy>(lr, window, layer, tensors, n_kv_heads, head_dim,
                                              source);
  }
  KVCAL_FAIL(source, ": layers[", layer, "].policy: unknown token policy");
}

}  // namespace kvcal
