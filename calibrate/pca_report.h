// Reading a pca.h5 back for people: `kvcal inspect pca.h5` and the SVG plot fit-pca writes next to
// its output.
//
// The text report: the header (model, sources, rule), then per layer and target the explained
// variance at ranks d/16, d/8, d/4, d/2 (mean over KV heads), the chosen rank and its energy, and
// the spectrum spread lambda_1 / lambda_median (K vs V: the knlp finding is that post-RoPE K is far
// more spread than V); when both k and k_rope were fitted, the energy pre-RoPE K vs post-RoPE K
// keeps at the same rank (k's chosen rank, and the probe ranks).
//
//   kvcal::describe_pca(kvcal::read_pca_file("pca.h5"), "pca.h5", std::cout);
//   kvcal::write_pca_svg(file, "pca.svg");
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

#include "calibrate/pca_format.h"

namespace kvcal {

// Mean over the blocks of (target, layer) of the explained energy at `rank`.
double layer_energy(const pca_file& f, const std::string& target, std::int64_t layer, int rank);
// lambda_1 / lambda_median of one spectrum (descending); inf when the median is 0.
double spectrum_spread(const std::vector<double>& eigenvalues);

void describe_pca(const pca_file& f, const std::string& path, std::ostream& os);
// Plain SVG text: one panel per target, explained energy vs rank, one curve per layer.
std::string pca_svg(const pca_file& f);
void write_pca_svg(const pca_file& f, const std::string& path);

}  // namespace kvcal
