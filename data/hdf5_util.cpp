#include "data/hdf5_util.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "core/error.h"

namespace lockstep::data::h5 {

void quiet_this_thread() {
  thread_local bool quiet = false;
  if (!quiet) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    quiet = true;
  }
}

namespace {
herr_t walk_first(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (n == 0 && err->desc) *out = err->desc;
  return 0;
}
}  // namespace

std::string last_error() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_first, &msg);
  H5Eclear2(H5E_DEFAULT);
  return msg;
}

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    kind_ = o.kind_;
    o.id_ = -1;
  }
  return *this;
}

herr_t Handle::reset() {
  if (id_ < 0) return 0;
  herr_t rc = 0;
  switch (kind_) {
    case Kind::File: rc = H5Fclose(id_); break;
    case Kind::Group: rc = H5Gclose(id_); break;
    case Kind::Dataset: rc = H5Dclose(id_); break;
    case Kind::Dataspace: rc = H5Sclose(id_); break;
    case Kind::Datatype: rc = H5Tclose(id_); break;
    case Kind::Attribute: rc = H5Aclose(id_); break;
    case Kind::Plist: rc = H5Pclose(id_); break;
  }
  id_ = -1;
  return rc;
}

Handle open_file_read(const std::string& path, int64_t chunk_cache_bytes) {
  quiet_this_thread();
  struct stat st {};
  LS_REQUIRE(::stat(path.c_str(), &st) == 0, DataError, path, ": no such file (expected an HDF5 dataset file; ",
             "make one with `lockstep data convert`)");
  LS_REQUIRE(S_ISREG(st.st_mode), DataError, path, ": not a regular file (expected an HDF5 dataset file)");
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), Handle::Kind::Plist);
  if (chunk_cache_bytes > 0) {
    // nslots: a prime well above the number of chunks the cache can hold (HDF5 advises ~100x).
    size_t nslots = 100003;
    H5Pset_cache(fapl.get(), 0, nslots, static_cast<size_t>(chunk_cache_bytes), 1.0);
  }
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
  if (f < 0) {
    std::string why = last_error();
    std::string hint = "not an HDF5 file";
    if (why.find("truncated") != std::string::npos) hint = "truncated HDF5 file";
    else if (why.find("signature") != std::string::npos) hint = "not an HDF5 file (no HDF5 signature)";
    else if (!why.empty()) hint = "cannot open as HDF5";
    throw DataError(str_cat(path, ": ", hint, why.empty() ? "" : str_cat(" (", why, ")"),
                            "; expected an HDF5 dataset file written by `lockstep data convert`"));
  }
  return Handle(f, Handle::Kind::File);
}

bool path_exists(hid_t loc, const std::string& path) {
  quiet_this_thread();
  std::string cur;
  size_t pos = 0;
  while (pos < path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    std::string part = path.substr(pos, next - pos);
    pos = next + 1;
    if (part.empty()) continue;
    cur += "/" + part;
    htri_t e = H5Lexists(loc, cur.c_str(), H5P_DEFAULT);
    if (e <= 0) {
      H5Eclear2(H5E_DEFAULT);
      return false;
    }
  }
  return true;
}

std::string DatasetInfo::type_str() const {
  switch (type_class) {
    case H5T_INTEGER: return str_cat(is_signed ? "int" : "uint", type_size * 8);
    case H5T_FLOAT: return str_cat("float", type_size * 8);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    default: return str_cat("type class ", static_cast<int>(type_class));
  }
}

std::string DatasetInfo::dims_str() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < dims.size(); ++i) os << (i ? ", " : "") << dims[i];
  os << "]";
  return os.str();
}

DatasetInfo describe(hid_t dataset) {
  quiet_this_thread();
  DatasetInfo info;
  Handle space(H5Dget_space(dataset), Handle::Kind::Dataspace);
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank > 0) {
    std::vector<hsize_t> d(rank);
    H5Sget_simple_extent_dims(space.get(), d.data(), nullptr);
    for (hsize_t v : d) info.dims.push_back(static_cast<int64_t>(v));
  }
  Handle type(H5Dget_type(dataset), Handle::Kind::Datatype);
  info.type_class = H5Tget_class(type.get());
  info.type_size = H5Tget_size(type.get());
  if (info.type_class == H5T_INTEGER) info.is_signed = H5Tget_sign(type.get()) == H5T_SGN_2;
  return info;
}

Handle open_dataset(hid_t file, const std::string& file_name, const std::string& path) {
  quiet_this_thread();
  LS_REQUIRE(path_exists(file, path), DataError, file_name, ": dataset ", path, " is missing",
             " (expected the lockstep dataset layout: /train/x, /train/y, /test/x, /test/y)");
  hid_t d = H5Dopen2(file, path.c_str(), H5P_DEFAULT);
  if (d < 0) throw DataError(str_cat(file_name, ": ", path, " is not a readable dataset (", last_error(), ")"));
  return Handle(d, Handle::Kind::Dataset);
}

bool has_attr(hid_t obj, const std::string& name) {
  quiet_this_thread();
  htri_t e = H5Aexists(obj, name.c_str());
  if (e < 0) H5Eclear2(H5E_DEFAULT);
  return e > 0;
}

std::optional<std::vector<std::string>> read_string_list_attr(hid_t obj, const std::string& name,
                                                              const std::string& where) {
  if (!has_attr(obj, name)) return std::nullopt;
  Handle attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT), Handle::Kind::Attribute);
  LS_REQUIRE(attr.valid(), DataError, where, ": cannot open attribute '", name, "' (", last_error(), ")");
  Handle type(H5Aget_type(attr.get()), Handle::Kind::Datatype);
  LS_REQUIRE(H5Tget_class(type.get()) == H5T_STRING, DataError, where, ": attribute '", name,
             "' must be a string or a list of strings");
  Handle space(H5Aget_space(attr.get()), Handle::Kind::Dataspace);
  hssize_t n = H5Sget_simple_extent_npoints(space.get());
  LS_REQUIRE(n >= 0 && H5Sget_simple_extent_ndims(space.get()) <= 1, DataError, where, ": attribute '", name,
             "' must be a scalar string or a 1-D array of strings");
  std::vector<std::string> out;
  if (n == 0) return out;
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle mem(H5Tcopy(H5T_C_S1), Handle::Kind::Datatype);
    H5Tset_size(mem.get(), H5T_VARIABLE);
    H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
    std::vector<char*> ptrs(n, nullptr);
    LS_REQUIRE(H5Aread(attr.get(), mem.get(), ptrs.data()) >= 0, DataError, where, ": cannot read attribute '",
               name, "' (", last_error(), ")");
    for (char* p : ptrs) out.emplace_back(p ? p : "");
    H5Dvlen_reclaim(mem.get(), space.get(), H5P_DEFAULT, ptrs.data());
  } else {
    size_t len = H5Tget_size(type.get());
    std::vector<char> buf(len * n + 1, '\0');
    Handle mem(H5Tcopy(type.get()), Handle::Kind::Datatype);
    LS_REQUIRE(H5Aread(attr.get(), mem.get(), buf.data()) >= 0, DataError, where, ": cannot read attribute '",
               name, "' (", last_error(), ")");
    for (hssize_t i = 0; i < n; ++i) {
      const char* p = buf.data() + i * len;
      size_t l = strnlen(p, len);
      std::string s(p, l);
      while (!s.empty() && s.back() == ' ') s.pop_back();  // SPACEPAD
      out.push_back(s);
    }
  }
  return out;
}

std::optional<std::string> read_string_attr(hid_t obj, const std::string& name, const std::string& where) {
  auto v = read_string_list_attr(obj, name, where);
  if (!v) return std::nullopt;
  LS_REQUIRE(v->size() == 1, DataError, where, ": attribute '", name, "' must be a single string, found ",
             v->size());
  return (*v)[0];
}

std::optional<int64_t> read_int_attr(hid_t obj, const std::string& name, const std::string& where) {
  if (!has_attr(obj, name)) return std::nullopt;
  Handle attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT), Handle::Kind::Attribute);
  Handle type(H5Aget_type(attr.get()), Handle::Kind::Datatype);
  Handle space(H5Aget_space(attr.get()), Handle::Kind::Dataspace);
  LS_REQUIRE(H5Tget_class(type.get()) == H5T_INTEGER && H5Sget_simple_extent_npoints(space.get()) == 1,
             DataError, where, ": attribute '", name, "' must be a single integer");
  int64_t v = 0;
  LS_REQUIRE(H5Aread(attr.get(), H5T_NATIVE_INT64, &v) >= 0, DataError, where, ": cannot read attribute '", name,
             "' (", last_error(), ")");
  return v;
}

namespace {
void write_fixed_strings(hid_t obj, const std::string& name, const std::vector<std::string>& values, bool scalar) {
  quiet_this_thread();
  size_t len = 1;
  for (const auto& s : values) len = std::max(len, s.size());
  Handle type(H5Tcopy(H5T_C_S1), Handle::Kind::Datatype);
  H5Tset_size(type.get(), len);
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_ASCII);
  hsize_t n = values.size();
  Handle space(scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr), Handle::Kind::Dataspace);
  std::vector<char> buf(len * std::max<size_t>(values.size(), 1), '\0');
  for (size_t i = 0; i < values.size(); ++i) std::memcpy(buf.data() + i * len, values[i].data(), values[i].size());
  if (has_attr(obj, name)) H5Adelete(obj, name.c_str());
  Handle attr(H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
              Handle::Kind::Attribute);
  LS_REQUIRE(attr.valid() && H5Awrite(attr.get(), type.get(), buf.data()) >= 0, DataError,
             "cannot write attribute '", name, "' (", last_error(), ")");
}
}  // namespace

void write_string_attr(hid_t obj, const std::string& name, const std::string& value) {
  write_fixed_strings(obj, name, {value}, true);
}

void write_string_list_attr(hid_t obj, const std::string& name, const std::vector<std::string>& values) {
  write_fixed_strings(obj, name, values, false);
}

void write_int_attr(hid_t obj, const std::string& name, int64_t value) {
  quiet_this_thread();
  Handle space(H5Screate(H5S_SCALAR), Handle::Kind::Dataspace);
  Handle attr(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
              Handle::Kind::Attribute);
  LS_REQUIRE(attr.valid() && H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) >= 0, DataError,
             "cannot write attribute '", name, "' (", last_error(), ")");
}

}  // namespace lockstep::data::h5
