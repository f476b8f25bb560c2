// Whole and row-block HDF5 datasets for fit-pca's files (pca.h5) and its capture reader, on top of
// the RAII layer of calibrate/h5.h. Paths are absolute ("/layers/3/k"); parents are created.
//
//   kvcal::h5_write_f64(f, "/v/0/1/eigenvalues", {d}, ev.data());
//   kvcal::h5_read_rows(f, "/layers/0/v", t0, n, out);   // fp16 / fp32 / fp64 -> float
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "calibrate/h5.h"

namespace kvcal {

// Element types kvcal writes: float16 (IEEE half, as h5py/numpy write it), float32, float64,
// int64.
enum class h5_dtype { f16, f32, f64, i64 };

bool h5_exists(const h5_file& f, const std::string& path);  // group or dataset
std::vector<std::int64_t> h5_dataset_dims(const h5_file& f, const std::string& path);
// The stored element type of a float dataset: f16, f32 or f64 (other classes: kvcal::error).
h5_dtype h5_dataset_float_type(const h5_file& f, const std::string& path);
// Creates a dataset; chunk_rows > 0 chunks it along dimension 0 (rows of dims[1..]).
void h5_create_dataset(h5_file& f, const std::string& path, h5_dtype type,
                       const std::vector<std::int64_t>& dims, std::int64_t chunk_rows = 0);
// Writes rows [row0, row0 + n_rows) from float memory (converted to the stored type).
void h5_write_rows(h5_file& f, const std::string& path, std::int64_t row0, std::int64_t n_rows,
                   const float* data);
// Reads rows [row0, row0 + n_rows) as float. fp16 data is read raw and converted by kvcal (HDF5's
// soft float16 conversion is slow); f32 / f64 go through HDF5's conversion.
void h5_read_rows(const h5_file& f, const std::string& path, std::int64_t row0, std::int64_t n_rows,
                  float* out);
// The same for a float16 dataset, as its raw IEEE binary16 bits (no conversion).
void h5_read_rows_f16(const h5_file& f, const std::string& path, std::int64_t row0,
                      std::int64_t n_rows, std::uint16_t* out);
// Whole datasets, stored as f64 / i64 (scalars: dims empty).
void h5_write_f64(h5_file& f, const std::string& path, const std::vector<std::int64_t>& dims,
                  const double* data);
void h5_write_i64(h5_file& f, const std::string& path, std::int64_t value);
std::vector<double> h5_read_f64(const h5_file& f, const std::string& path);
std::int64_t h5_read_i64(const h5_file& f, const std::string& path);

}  // namespace kvcal
