// Thin, checked helpers over HDF5's C API for data/: handles that close themselves, error messages
// that name the file and the object (never HDF5's own stack on stderr), typed string attributes.
//
// HDF5 1.10.8 (Debian) facts these helpers exist for (FINDINGS.md §1c): error printing is silenced
// per thread only; a rank-3 dataset reads silently into a rank-2 buffer and float reads into uint8
// clamp without error. So callers check rank, dims, class, size and sign with `describe()` first.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace lockstep::data::h5 {

// Switch off HDF5's automatic error printing for the calling thread (idempotent, cheap).
void quiet_this_thread();
// The innermost message on the calling thread's HDF5 error stack ("" when empty), then clears it.
std::string last_error();

// Owns an hid_t and closes it with the matching H5*close.
class Handle {
 public:
  enum class Kind { File, Group, Dataset, Dataspace, Datatype, Attribute, Plist };
  Handle() = default;
  Handle(hid_t id, Kind kind) : id_(id), kind_(kind) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), kind_(o.kind_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Close now; returns the close status (negative on failure).
  herr_t reset();

 private:
  hid_t id_ = -1;
  Kind kind_ = Kind::File;
};

// Open an existing file read-only. Throws DataError naming the file and the reason (missing,
// not HDF5, truncated). `chunk_cache_bytes` > 0 sizes the file-wide raw-data chunk cache.
Handle open_file_read(const std::string& path, int64_t chunk_cache_bytes = 0);

// Whether `path` ("/a/b") exists, checking each component (H5Lexists fails on a missing parent).
bool path_exists(hid_t loc, const std::string& path);

// Shape and element type of a dataset, for checks before reading.
struct DatasetInfo {
  std::vector<int64_t> dims;
  H5T_class_t type_class = H5T_NO_CLASS;
  size_t type_size = 0;
  bool is_signed = false;
  std::string type_str() const;  // "uint8", "int32", "float32", "string", ...
  std::string dims_str() const;  // "[60000, 28, 28]"
};
DatasetInfo describe(hid_t dataset);

Handle open_dataset(hid_t file, const std::string& file_name, const std::string& path);

// Attributes. Readers accept fixed- and variable-length strings, scalar or 1-D.
bool has_attr(hid_t obj, const std::string& name);
std::optional<std::vector<std::string>> read_string_list_attr(hid_t obj, const std::string& name,
                                                              const std::string& where);
std::optional<std::string> read_string_attr(hid_t obj, const std::string& name, const std::string& where);
std::optional<int64_t> read_int_attr(hid_t obj, const std::string& name, const std::string& where);
// Writers emit fixed-length NULLPAD ASCII strings (what h5py writes for bytes).
void write_string_attr(hid_t obj, const std::string& name, const std::string& value);
void write_string_list_attr(hid_t obj, const std::string& name, const std::vector<std::string>& values);
void write_int_attr(hid_t obj, const std::string& name, int64_t value);

}  // namespace lockstep::data::h5
