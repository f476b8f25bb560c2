// Preset templates and recipe files: a recipe written once for any model, expanded against a
// model's config.json into one entry per layer (presets/templates/README.md lists the shipped
// ones and their sources; docs/formats/preset.md the schema).
//
// Template / recipe-file JSON: the stored recipe without format, version and model, where
//   "layer": {...}            one layer entry applied to every layer, or
//   "layers": [{...}, ...]    one entry per layer (the count must match the model);
//   "budget": {"retain": r} | {"tokens": n} | {"pyramid": {"first": a, "middle": b, "last": c}}
//                             (with "layer" only) every layer's budget; a pyramid decays linearly
//                             from layer 0 to layer n/2 (middle) and on to the last layer
//                             (PyramidKV-style); without "middle" it runs first -> last, without
//                             "last" it holds the middle value to the end;
//   learned policies may omit "in_dim": hidden_size (features "hidden") or head_dim ("key").
//
//   nlohmann::json t = kvcal::preset_template("kivi-2");
//   kvcal::preset_recipe r = kvcal::expand_recipe(t, cfg, "template kivi-2");
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/model_config.h"
#include "runtime/preset_recipe.h"

namespace kvcal {

// Names of the templates compiled into this build, sorted.
std::vector<std::string> preset_template_names();
// The template's JSON; an unknown name is an error listing the known ones.
nlohmann::json preset_template(const std::string& name);

// Per-layer retain fractions of a pyramid over `n_layers` layers (middle / last < 0: not given).
std::vector<double> pyramid_retain(double first, double middle, double last,
                                   std::int64_t n_layers);

// Expands a template or recipe file against `cfg` and validates the result (errors name
// `source` and the JSON path). opts.allow_unset_rank keeps PCA ranks / AE latents of 0 (to be
// chosen from calibration files).
preset_recipe expand_recipe(const nlohmann::json& j, const model_config& cfg,
                            const std::string& source, const recipe_parse_options& opts = {});

}  // namespace kvcal
