// Handles over HDF5's C API for core/'s files (checkpoints, Keras .h5): an hid_t that closes itself with
// the H5*close it is given, and silencing HDF5's own error stack (we report our own errors).
#pragma once

#include <hdf5.h>

namespace lockstep::hdf5 {

// HDF5 prints an error stack from every thread that has not silenced it; we report our own errors.
struct Quiet {
  Quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

struct Handle {
  hid_t id;
  herr_t (*close)(hid_t);
  Handle(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id(o.id), close(o.close) { o.id = -1; }
  ~Handle() {
    if (id >= 0) close(id);
  }
  operator hid_t() const { return id; }
};

}  // namespace lockstep::hdf5
