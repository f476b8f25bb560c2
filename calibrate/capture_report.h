// `kvcal inspect capture.h5`: what a capture holds (model, tokens, options, dataset sizes) and a
// short per layer / KV head summary of K and V over its first tokens: the share of variance in
// the top 8 / 32 principal components (centred), and channel outliers (max over channels of the
// mean |x| of a channel, divided by the mean over channels; and the largest |x|).
//
//   if (kvcal::is_capture_file(path)) kvcal::describe_capture(path, std::cout);
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>

namespace kvcal {

// An HDF5 file whose `format` attribute is kvcal.capture (false for anything else, never throws).
bool is_capture_file(const std::string& path);
// max_rows: tokens read per layer for the K / V summary (the first ones).
void describe_capture(const std::string& path, std::ostream& out, std::int64_t max_rows = 16384);

}  // namespace kvcal
