// Tensor: an array of float32 (training) or float64 (gradient checks and references) with a shape,
// a device, and contiguous (row-major) storage.
//
// Storage is shared: `view()` and `reshape()` return tensors that alias the same memory, which is how
// the model keeps every parameter and gradient in one flat arena (see core/model.h). Copying a Tensor
// object copies the handle, never the data; use `clone()` for a deep copy.
//
// Numeric work never happens here: the ops layer (core/ops.h) is the only place with loops, and it
// dispatches on `device()`.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace lockstep {

enum class Device { CPU, CUDA };
const char* device_name(Device d);

enum class DType { F32, F64 };
const char* dtype_name(DType t);
inline int64_t dtype_size(DType t) { return t == DType::F32 ? 4 : 8; }
template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// A block of device memory. CPU blocks are 64-byte aligned. An external block (memory that something
// else allocated, e.g. a communicator's shared mapping) is not freed here: `owner` keeps it alive
// until the last tensor using it is gone.
class Storage {
 public:
  Storage(Device device, int64_t bytes);
  Storage(Device device, int64_t bytes, void* data, std::shared_ptr<void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Device device_;
  int64_t bytes_;
  void* data_ = nullptr;
  std::shared_ptr<void> owner_;  // external memory: its keeper (null: ours, freed with device_free)
};

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised memory of the given shape.
  explicit Tensor(Shape shape, Device device = Device::CPU, DType dtype = DType::F32);
  static Tensor zeros(Shape shape, Device device = Device::CPU, DType dtype = DType::F32);
  static Tensor full(Shape shape, double value, Device device = Device::CPU, DType dtype = DType::F32);
  static Tensor from_vector(Shape shape, const std::vector<float>& values, Device device = Device::CPU);
  static Tensor from_vector(Shape shape, const std::vector<double>& values, Device device = Device::CPU);
  // A tensor over memory allocated elsewhere (at least numel x dtype bytes, suitably aligned), kept
  // alive by `owner` for as long as any tensor uses it. Contents are left as they are.
  static Tensor wrap(void* data, Shape shape, Device device, DType dtype, std::shared_ptr<void> owner);
  // A new uninitialised tensor with this one's device and dtype.
  Tensor empty_like(Shape shape) const { return Tensor(std::move(shape), device(), dtype_); }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  DType dtype() const { return dtype_; }

  // Typed pointer to the first element; checks the dtype.
  template <typename T> T* data() const {
    check_dtype(dtype_of<T>());
    return storage_ ? static_cast<T*>(storage_->data()) + offset_ : nullptr;
  }
  float* data() const { return data<float>(); }
  void* raw() const { return storage_ ? static_cast<char*>(storage_->data()) + offset_ * dtype_size(dtype_) : nullptr; }

  // Alias `shape`'s numel elements starting `offset` elements into this tensor.
  Tensor view(int64_t offset, Shape shape) const;
  // Same data, new shape (numel must match). One dimension may be -1.
  Tensor reshape(Shape shape) const;
  // Rows [begin, end) along the first dimension, as a view.
  Tensor slice_rows(int64_t begin, int64_t end) const;

  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  // Copy the contents of `src` (same numel) into this tensor, across devices if needed.
  void copy_from(const Tensor& src) const;
  std::vector<float> to_vector() const;
  std::vector<double> to_double_vector() const;
  // Element access on CPU tensors (tests, small bookkeeping); flat index.
  double at(int64_t i) const;
  bool shares_storage_with(const Tensor& other) const { return storage_ && storage_ == other.storage_; }

 private:
  void check_dtype(DType want) const;
  std::shared_ptr<Storage> storage_;
  DType dtype_ = DType::F32;
  int64_t offset_ = 0;
  int64_t numel_ = 0;
  Shape shape_;
};

// Memory on a device; CPU memory is 64-byte aligned. The CUDA versions live in the CUDA backend.
void* device_alloc(Device device, int64_t bytes);
void device_free(Device device, void* p);
void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, int64_t bytes);
bool cuda_available();

}  // namespace lockstep
