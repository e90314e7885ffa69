#include "core/checkpoint.h"
#include "core/hdf5_handle.h"
#include "core/keras_io.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <zlib.h>

namespace lockstep {

namespace {

using hdf5::Handle;
using hdf5::Quiet;

// Test-only fault injection (tests/trainer/guarantees_test.cpp; never set in production):
//   LOCKSTEP_TEST_CKPT_POINT=N[:SIG]  raise SIG (default SIGKILL) at the Nth write point of this process's
//                                     save_checkpoint calls (points: file created, each dataset written,
//                                     commit marker, closed, fsynced, renamed);
//   LOCKSTEP_TEST_CKPT_TRACE=1        print every point to stderr (the tests count them).
void test_point() {
  static const char* at = std::getenv("LOCKSTEP_TEST_CKPT_POINT");
  static const bool trace = std::getenv("LOCKSTEP_TEST_CKPT_TRACE") != nullptr;
  if (!at && !trace) return;
  static long long count = 0;
  ++count;
  if (trace) std::fprintf(stderr, "lockstep-test: checkpoint write point %lld\n", count);
  long long n = 0;
  int sig = SIGKILL;
  if (at && std::sscanf(at, "%lld:%d", &n, &sig) >= 1 && n == count) std::raise(sig);
}

void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type, std::max<size_t>(1, value.size()));
  H5Tset_strpad(type, H5T_STR_NULLPAD);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (attr < 0 || H5Awrite(attr, type, value.empty() ? "" : value.data()) < 0)
    throw Error(str_cat("writing attribute ", name));
}

void write_string_list_attr(hid_t obj, const char* name, const std::vector<std::string>& values) {
  size_t width = 1;
  for (const auto& v : values) width = std::max(width, v.size());
  std::vector<char> buf(width * std::max<size_t>(1, values.size()), '\0');
  for (size_t i = 0; i < values.size(); ++i) std::memcpy(&buf[i * width], values[i].data(), values[i].size());
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type, width);
  H5Tset_strpad(type, H5T_STR_NULLPAD);
  hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Handle attr(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (attr < 0 || H5Awrite(attr, type, buf.data()) < 0) throw Error(str_cat("writing attribute ", name));
}

std::string read_string_attr(hid_t obj, const char* name, const std::string& path) {
  if (H5Aexists(obj, name) <= 0) throw CheckpointError(str_cat(path, ": attribute '", name, "' is missing"));
  Handle attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(attr), H5Tclose);
  if (H5Tget_class(type) != H5T_STRING) throw CheckpointError(str_cat(path, ": attribute '", name, "' is not a string"));
  if (H5Tis_variable_str(type) > 0) {
    char* s = nullptr;
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem, H5T_VARIABLE);
    if (H5Aread(attr, mem, &s) < 0) throw CheckpointError(str_cat(path, ": cannot read attribute '", name, "'"));
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  size_t size = H5Tget_size(type);
  std::string buf(size, '\0');
  if (H5Aread(attr, type, buf.data()) < 0) throw CheckpointError(str_cat(path, ": cannot read attribute '", name, "'"));
  return std::string(buf.c_str());
}

void write_double_attr(hid_t obj, const std::string& name, double v) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj, name.c_str(), H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (attr < 0 || H5Awrite(attr, H5T_NATIVE_DOUBLE, &v) < 0) throw Error("writing attribute " + name);
}

void write_tensor(hid_t parent, const std::string& name, const Tensor& t, uLong* crc) {
  Tensor c = t.device() == Device::CPU && t.dtype() == DType::F32 ? t : t.to(Device::CPU).to(DType::F32);
  std::vector<hsize_t> dims(c.shape().begin(), c.shape().end());
  if (dims.empty()) dims.push_back(1);
  Handle space(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl, 1);
  Handle ds(H5Dcreate2(parent, name.c_str(), H5T_IEEE_F32LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (ds < 0 || H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.data()) < 0)
    throw Error("writing dataset " + name);
  *crc = crc32(*crc, reinterpret_cast<const Bytef*>(c.data()), uInt(c.numel() * 4));
  test_point();
}

// Each tensor as a dataset of `parent`, their names listed in the string attribute `names_attr`.
void write_named_tensors(hid_t parent, const char* names_attr, const std::vector<std::pair<std::string, Tensor>>& tensors,
                         uLong* crc) {
  std::vector<std::string> names;
  for (const auto& [n, t] : tensors) {
    names.push_back(n);
    write_tensor(parent, n, t, crc);
  }
  write_string_list_attr(parent, names_attr, names);
}

void read_tensor(hid_t parent, const std::string& name, const Tensor& into, const std::string& path, uLong* crc) {
  if (H5Lexists(parent, name.c_str(), H5P_DEFAULT) <= 0)
    throw CheckpointError(str_cat(path, ": dataset '", name, "' is missing"));
  Handle ds(H5Dopen2(parent, name.c_str(), H5P_DEFAULT), H5Dclose);
  Handle space(H5Dget_space(ds), H5Sclose);
  Handle type(H5Dget_type(ds), H5Tclose);
  int nd = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(size_t(std::max(nd, 0)));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  Shape got(dims.begin(), dims.end());
  Shape want = into.shape().empty() ? Shape{1} : into.shape();
  if (H5Tget_class(type) != H5T_FLOAT || got != want)
    throw CheckpointError(str_cat(path, ": dataset '", name, "' is ", H5Tget_class(type) == H5T_FLOAT ? "float " : "not float ",
                                  shape_str(got), ", the model expects float ", shape_str(want)));
  Tensor host(into.shape(), Device::CPU, DType::F32);
  if (H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, host.data()) < 0)
    throw CheckpointError(str_cat(path, ": cannot read dataset '", name, "' (truncated or corrupt file?)"));
  *crc = crc32(*crc, reinterpret_cast<const Bytef*>(host.data()), uInt(host.numel() * 4));
  into.copy_from(into.dtype() == DType::F32 ? host.to(into.device()) : host.to(DType::F64).to(into.device()));
}

// Format 2: the checksum also covers the run file and the training state (scalars and strings, in name
// order), which a resumed run continues from: a flipped bit there was accepted silently by format 1.
uLong crc_attrs(uLong crc, const std::string& run_config, const std::map<std::string, double>& state,
                const std::map<std::string, std::string>& strings) {
  auto add = [&](const void* p, size_t n) { crc = crc32(crc, static_cast<const Bytef*>(p), uInt(n)); };
  add(run_config.data(), run_config.size());
  for (const auto& [k, v] : state) {
    add(k.c_str(), k.size() + 1);
    add(&v, sizeof v);
  }
  for (const auto& [k, v] : strings) {
    add(k.c_str(), k.size() + 1);
    add(v.data(), v.size());
  }
  return crc;
}

void fsync_path(const std::string& p, bool dir) {
  int fd = ::open(p.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::vector<std::string> read_string_list_attr(hid_t obj, const char* name, const std::string& path) {
  std::vector<std::string> out;
  if (H5Aexists(obj, name) <= 0) throw CheckpointError(str_cat(path, ": attribute '", name, "' is missing"));
  Handle attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(attr), H5Tclose);
  Handle space(H5Aget_space(attr), H5Sclose);
  if (H5Tget_class(type) != H5T_STRING) throw CheckpointError(str_cat(path, ": attribute '", name, "' is not a string list"));
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  if (n <= 0) return out;
  if (H5Tis_variable_str(type) > 0) {
    std::vector<char*> ptrs(size_t(n), nullptr);
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem, H5T_VARIABLE);
    if (H5Aread(attr, mem, ptrs.data()) < 0) throw CheckpointError(str_cat(path, ": cannot read attribute '", name, "'"));
    for (char* p : ptrs) {
      out.emplace_back(p ? p : "");
      H5free_memory(p);
    }
    return out;
  }
  const size_t width = H5Tget_size(type);
  std::vector<char> buf(width * size_t(n));
  if (H5Aread(attr, type, buf.data()) < 0) throw CheckpointError(str_cat(path, ": cannot read attribute '", name, "'"));
  for (hssize_t i = 0; i < n; ++i) out.emplace_back(&buf[size_t(i) * width], strnlen(&buf[size_t(i) * width], width));
  return out;
}

// A dataset of any float shape, read into a new CPU float32 tensor.
Tensor read_any(hid_t parent, const std::string& name, const std::string& path, uLong* crc) {
  if (H5Lexists(parent, name.c_str(), H5P_DEFAULT) <= 0)
    throw CheckpointError(str_cat(path, ": dataset '", name, "' is missing"));
  Handle ds(H5Dopen2(parent, name.c_str(), H5P_DEFAULT), H5Dclose);
  Handle sp(H5Dget_space(ds), H5Sclose);
  const int nd = H5Sget_simple_extent_ndims(sp);
  std::vector<hsize_t> dims(size_t(std::max(nd, 0)));
  H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
  Tensor t(Shape(dims.begin(), dims.end()));
  if (H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data()) < 0)
    throw CheckpointError(str_cat(path, ": cannot read dataset '", name, "' (truncated or corrupt file?)"));
  *crc = crc32(*crc, reinterpret_cast<const Bytef*>(t.data()), uInt(t.numel() * 4));
  return t;
}

}  // namespace

void save_checkpoint(const std::string& path, const Model& model, const CheckpointContents& extra) {
  Quiet quiet;
  namespace fs = std::filesystem;
  const std::string tmp = path + ".tmp";
  fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
  }
  {
    Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (file < 0)
      throw CheckpointError(str_cat(tmp, ": cannot create the checkpoint file (", std::strerror(errno),
                                    "); is the directory writable?"));
    test_point();
    try {
      uLong crc = crc32(0L, Z_NULL, 0);
      write_string_attr(file, "format", "lockstep-checkpoint");
      write_double_attr(file, "format_version", 2);
      write_string_attr(file, "model_name", model.name());
      write_string_attr(file, "run_config", extra.run_config);
      Handle mw(H5Gcreate2(file, "model_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
      std::vector<std::string> layer_names;
      for (const auto& l : model.layers()) layer_names.push_back(l->name());
      write_string_list_attr(mw, "layer_names", layer_names);
      write_string_attr(mw, "backend", "lockstep");
      write_string_attr(mw, "keras_version", "2.10.0");
      for (const auto& l : model.layers()) {
        Handle g(H5Gcreate2(mw, l->name().c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
        std::vector<std::string> names;
        for (const Weight& w : l->weights()) {
          std::string n = l->name() + "/" + w.name + ":0";
          names.push_back(n);
          write_tensor(g, n, w.value, &crc);
        }
        write_string_list_attr(g, "weight_names", names);
      }
      Handle ow(H5Gcreate2(file, "optimizer_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
      write_named_tensors(ow, "weight_names", extra.optimizer, &crc);
      Handle ts(H5Gcreate2(file, "training_state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
      for (const auto& [k, v] : extra.state) write_double_attr(ts, k, v);
      for (const auto& [k, v] : extra.strings) write_string_attr(ts, k.c_str(), v);
      Handle tt(H5Gcreate2(ts, "tensors", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
      write_named_tensors(tt, "names", extra.tensors, &crc);
      crc = crc_attrs(crc, extra.run_config, extra.state, extra.strings);
      write_double_attr(file, "checksum_crc32", double(crc));
      // The commit marker, written last: a file without it is incomplete.
      write_double_attr(file, "complete", 1);
      if (H5Fflush(file, H5F_SCOPE_GLOBAL) < 0) throw Error("flush failed");
      test_point();
    } catch (const std::exception& e) {
      std::remove(tmp.c_str());
      throw CheckpointError(str_cat(tmp, ": writing the checkpoint failed (", e.what(), "; disk full?)"));
    }
  }
  test_point();
  fsync_path(tmp, false);
  test_point();
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    throw CheckpointError(str_cat(path, ": cannot rename the finished checkpoint into place (", std::strerror(err), ")"));
  }
  test_point();
  fsync_path(parent.empty() ? "." : parent.string(), true);
}

namespace {
Handle open_checkpoint(const std::string& path) {
  if (!std::filesystem::exists(path)) throw CheckpointError(path + ": no such checkpoint file");
  if (H5Fis_hdf5(path.c_str()) <= 0) throw CheckpointError(path + ": not an HDF5 file (truncated or corrupt?)");
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (file < 0) throw CheckpointError(path + ": cannot open the checkpoint (truncated or corrupt?)");
  if (H5Aexists(file, "complete") <= 0) throw CheckpointError(path + ": incomplete checkpoint (no commit marker)");
  return file;
}

double read_double_attr(hid_t obj, const char* name) {
  Handle attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  double v = 0;
  if (attr < 0 || H5Aread(attr, H5T_NATIVE_DOUBLE, &v) < 0) return std::nan("");
  return v;
}
}  // namespace

void save_predictions(const std::string& path, const Tensor& prob, const Tensor& sd, const std::vector<int32_t>& labels) {
  Quiet quiet;
  const int64_t n = prob.dim(0), k = prob.numel() / std::max<int64_t>(prob.dim(0), 1);
  std::vector<int32_t> pred(size_t(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    const float* p = prob.data() + i * k;
    pred[size_t(i)] = k == 1 ? int32_t(p[0] >= 0.5f) : int32_t(std::max_element(p, p + k) - p);
  }
  const std::string tmp = path + ".tmp";
  const bool csv = path.size() > 4 && path.compare(path.size() - 4, 4, ".csv") == 0;
  if (csv) {
    FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) throw UserError(str_cat(tmp, ": cannot write (", std::strerror(errno), ")"));
    std::fprintf(f, "index,label,prediction");
    for (int64_t j = 0; j < k; ++j) std::fprintf(f, ",p%lld", static_cast<long long>(j));
    if (sd.defined())
      for (int64_t j = 0; j < k; ++j) std::fprintf(f, ",std%lld", static_cast<long long>(j));
    std::fprintf(f, "\n");
    for (int64_t i = 0; i < n; ++i) {
      std::fprintf(f, "%lld,%d,%d", static_cast<long long>(i), i < int64_t(labels.size()) ? labels[size_t(i)] : -1,
                   pred[size_t(i)]);
      for (int64_t j = 0; j < k; ++j) std::fprintf(f, ",%.7g", double(prob.data()[i * k + j]));
      if (sd.defined())
        for (int64_t j = 0; j < k; ++j) std::fprintf(f, ",%.7g", double(sd.data()[i * k + j]));
      std::fprintf(f, "\n");
    }
    const bool ok = std::fflush(f) == 0 && fsync(fileno(f)) == 0;
    std::fclose(f);
    if (!ok) {
      std::remove(tmp.c_str());
      throw UserError(str_cat(tmp, ": write failed (disk full?)"));
    }
  } else {
    Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (file < 0) throw UserError(str_cat(tmp, ": cannot create (", std::strerror(errno), ")"));
    try {
      uLong crc = 0;
      write_tensor(file, "probabilities", prob, &crc);
      if (sd.defined()) write_tensor(file, "std", sd, &crc);
      auto write_ints = [&](const char* name, const std::vector<int32_t>& v) {
        hsize_t dims = v.size();
        Handle space(H5Screate_simple(1, &dims, nullptr), H5Sclose);
        Handle ds(H5Dcreate2(file, name, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
        if (ds < 0 || (!v.empty() && H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0))
          throw Error(str_cat("writing dataset ", name));
      };
      write_ints("predictions", pred);
      write_ints("labels", labels);
    } catch (const std::exception& e) {
      std::remove(tmp.c_str());
      throw UserError(str_cat(tmp, ": writing predictions failed (", e.what(), ")"));
    }
  }
  fsync_path(tmp, false);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw UserError(str_cat(path, ": cannot rename into place (", std::strerror(errno), ")"));
  }
}

std::string checkpoint_run_config(const std::string& path) {
  Quiet quiet;
  Handle file = open_checkpoint(path);
  return read_string_attr(file, "run_config", path);
}

CheckpointContents load_checkpoint(const std::string& path, Model& model, const std::vector<int>* only_layers) {
  Quiet quiet;
  // A Keras .h5 (model.save / save_weights): its weights by layer name (core/keras_io.h).
  if (is_keras_file(path)) {
    load_keras_weights(path, model, only_layers);
    return {};
  }
  Handle file = open_checkpoint(path);
  CheckpointContents out;
  uLong crc = crc32(0L, Z_NULL, 0);
  out.run_config = read_string_attr(file, "run_config", path);
  if (H5Lexists(file, "model_weights", H5P_DEFAULT) <= 0) throw CheckpointError(path + ": group 'model_weights' is missing");
  Handle mw(H5Gopen2(file, "model_weights", H5P_DEFAULT), H5Gclose);
  // Every dataset is read in file order (for the checksum); the wanted layers are copied into the model.
  std::vector<char> wanted(model.layers().size(), only_layers == nullptr);
  if (only_layers)
    for (int i : *only_layers) wanted.at(size_t(i)) = 1;
  std::vector<char> found(model.layers().size(), 0);
  for (const std::string& lname : read_string_list_attr(mw, "layer_names", path)) {
    if (H5Lexists(mw, lname.c_str(), H5P_DEFAULT) <= 0)
      throw CheckpointError(str_cat(path, ": group 'model_weights/", lname, "' is missing (corrupt file?)"));
    Handle g(H5Gopen2(mw, lname.c_str(), H5P_DEFAULT), H5Gclose);
    const int li = model.find_layer(lname);
    const bool take = li >= 0 && wanted[size_t(li)];
    std::vector<std::string> wnames = read_string_list_attr(g, "weight_names", path);
    if (!take) {
      for (const auto& wn : wnames) read_any(g, wn, path, &crc);
      continue;
    }
    Layer& layer = model.layer(li);
    found[size_t(li)] = 1;
    if (wnames.size() != layer.weights().size())
      throw CheckpointError(str_cat(path, ": layer '", lname, "' has ", wnames.size(), " weights in the file but ",
                                    layer.weights().size(), " in the model (", layer.keras_class(),
                                    "): a checkpoint of another model?"));
    for (size_t k = 0; k < wnames.size(); ++k) {
      const std::string want = lname + "/" + layer.weights()[k].name + ":0";
      if (wnames[k] != want)
        throw CheckpointError(str_cat(path, ": layer '", lname, "' weight ", k, " is '", wnames[k], "', the model expects '",
                                      want, "' (a checkpoint of another model?)"));
      read_tensor(g, want, layer.weights()[k].value, path, &crc);
    }
  }
  for (size_t i = 0; i < found.size(); ++i)
    if (wanted[i] && !found[i] && !model.layers()[i]->weights().empty())
      throw CheckpointError(str_cat(path, ": no weights for layer '", model.layers()[i]->name(),
                                    "' (a checkpoint of another model or run file?)"));
  if (H5Lexists(file, "optimizer_weights", H5P_DEFAULT) > 0) {
    Handle ow(H5Gopen2(file, "optimizer_weights", H5P_DEFAULT), H5Gclose);
    if (H5Aexists(ow, "weight_names") > 0)
      for (const auto& name : read_string_list_attr(ow, "weight_names", path))
        out.optimizer.emplace_back(name, read_any(ow, name, path, &crc));
  }
  if (H5Lexists(file, "training_state", H5P_DEFAULT) > 0) {
    Handle ts(H5Gopen2(file, "training_state", H5P_DEFAULT), H5Gclose);
    struct Sink {
      std::map<std::string, double>* nums;
      std::map<std::string, std::string>* strs;
      const std::string* path;
    } sink{&out.state, &out.strings, &path};
    auto visit = [](hid_t obj, const char* name, const H5A_info_t*, void* data) -> herr_t {
      auto* s = static_cast<Sink*>(data);
      Handle attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
      Handle type(H5Aget_type(attr), H5Tclose);
      if (H5Tget_class(type) == H5T_STRING) {
        try {
          (*s->strs)[name] = read_string_attr(obj, name, *s->path);
        } catch (...) {
          return -1;
        }
        return 0;
      }
      double v = 0;
      if (H5Aread(attr, H5T_NATIVE_DOUBLE, &v) < 0) return -1;
      (*s->nums)[name] = v;
      return 0;
    };
    hsize_t idx = 0;
    if (H5Aiterate2(ts, H5_INDEX_NAME, H5_ITER_INC, &idx, visit, &sink) < 0)
      throw CheckpointError(path + ": cannot read group 'training_state'");
    if (H5Lexists(ts, "tensors", H5P_DEFAULT) > 0) {
      Handle tt(H5Gopen2(ts, "tensors", H5P_DEFAULT), H5Gclose);
      for (const auto& name : read_string_list_attr(tt, "names", path))
        out.tensors.emplace_back(name, read_any(tt, name, path, &crc));
    }
  }
  if (H5Aexists(file, "format_version") > 0 && read_double_attr(file, "format_version") >= 2)
    crc = crc_attrs(crc, out.run_config, out.state, out.strings);
  if (H5Aexists(file, "checksum_crc32") > 0) {
    const double want = read_double_attr(file, "checksum_crc32");
    if (want != double(crc))
      throw CheckpointError(str_cat(path, ": checksum mismatch (stored ", uint64_t(want), ", computed ", uint64_t(crc),
                                    "): the file is corrupt; not loaded"));
  }
  return out;
}

}  // namespace lockstep
