#include "core/tensor.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/error.h"
#include "core/ops.h"

namespace lockstep {

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }
const char* dtype_name(DType t) { return t == DType::F32 ? "float32" : "float64"; }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  if (s.size() == 1) os << ",";
  os << ")";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    LS_CHECK(d >= 0, "negative dimension in shape ", shape_str(s));
    n *= d;
  }
  return n;
}

Storage::Storage(Device device, int64_t bytes) : device_(device), bytes_(bytes) {
  data_ = device_alloc(device, bytes);
}
Storage::Storage(Device device, int64_t bytes, void* data, std::shared_ptr<void> owner)
    : device_(device), bytes_(bytes), data_(data), owner_(std::move(owner)) {
  LS_CHECK(data_ != nullptr && owner_ != nullptr, "external storage needs memory and an owner");
}
Storage::~Storage() {
  if (!owner_) device_free(device_, data_);
}

Tensor::Tensor(Shape shape, Device device, DType dtype)
    : dtype_(dtype), numel_(shape_numel(shape)), shape_(std::move(shape)) {
  storage_ = std::make_shared<Storage>(device, numel_ * dtype_size(dtype));
}

Tensor Tensor::wrap(void* data, Shape shape, Device device, DType dtype, std::shared_ptr<void> owner) {
  Tensor t;
  t.dtype_ = dtype;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  t.storage_ = std::make_shared<Storage>(device, t.numel_ * dtype_size(dtype), data, std::move(owner));
  return t;
}

void Tensor::check_dtype(DType want) const {
  LS_CHECK(dtype_ == want, "tensor of dtype ", dtype_name(dtype_), " accessed as ", dtype_name(want));
}

Tensor Tensor::zeros(Shape shape, Device device, DType dtype) { return full(std::move(shape), 0.0, device, dtype); }

Tensor Tensor::full(Shape shape, double value, Device device, DType dtype) {
  Tensor t(std::move(shape), device, dtype);
  ops::fill(t, value);
  return t;
}

template <typename T>
static Tensor from_vec(Shape shape, const std::vector<T>& values, Device device) {
  Tensor t(std::move(shape), Device::CPU, dtype_of<T>());
  LS_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "from_vector: ", values.size(),
           " values for shape ", shape_str(t.shape()));
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * sizeof(T));
  return device == Device::CPU ? t : t.to(device);
}
Tensor Tensor::from_vector(Shape shape, const std::vector<float>& v, Device d) { return from_vec(std::move(shape), v, d); }
Tensor Tensor::from_vector(Shape shape, const std::vector<double>& v, Device d) { return from_vec(std::move(shape), v, d); }

int64_t Tensor::dim(int i) const {
  int r = rank();
  int j = i < 0 ? i + r : i;
  LS_CHECK(j >= 0 && j < r, "dimension ", i, " out of range for shape ", shape_str(shape_));
  return shape_[j];
}

Tensor Tensor::view(int64_t offset, Shape shape) const {
  Tensor t;
  t.numel_ = shape_numel(shape);
  LS_CHECK(offset >= 0 && offset + t.numel_ <= numel_, "view of ", t.numel_, " at ", offset,
           " exceeds tensor of ", numel_);
  t.storage_ = storage_;
  t.dtype_ = dtype_;
  t.offset_ = offset_ + offset;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      LS_CHECK(infer < 0, "reshape: more than one -1 in ", shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) shape[infer] = known == 0 ? 0 : numel_ / known;
  LS_CHECK(shape_numel(shape) == numel_, "reshape ", shape_str(shape_), " -> ", shape_str(shape));
  return view(0, std::move(shape));
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  LS_CHECK(rank() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "slice_rows [", begin, ", ",
           end, ") of ", shape_str(shape_));
  Shape s = shape_;
  s[0] = end - begin;
  int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  return view(begin * row, std::move(s));
}

Tensor Tensor::clone() const { return to(device()); }

Tensor Tensor::to(Device device) const {
  Tensor t(shape_, device, dtype_);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return clone();
  LS_CHECK(device() == Device::CPU, "dtype conversion is done on the CPU");
  Tensor t(shape_, Device::CPU, dtype);
  if (dtype == DType::F64) {
    const float* s = data<float>();
    double* d = t.data<double>();
    for (int64_t i = 0; i < numel_; ++i) d[i] = s[i];
  } else {
    const double* s = data<double>();
    float* d = t.data<float>();
    for (int64_t i = 0; i < numel_; ++i) d[i] = static_cast<float>(s[i]);
  }
  return t;
}

void Tensor::copy_from(const Tensor& src) const {
  LS_CHECK(src.numel() == numel_, "copy_from: ", shape_str(src.shape()), " into ", shape_str(shape_));
  LS_CHECK(src.dtype() == dtype_, "copy_from: ", dtype_name(src.dtype()), " into ", dtype_name(dtype_));
  if (numel_ == 0 || src.raw() == raw()) return;
  device_copy(raw(), device(), src.raw(), src.device(), numel_ * dtype_size(dtype_));
}

std::vector<float> Tensor::to_vector() const {
  if (dtype_ == DType::F64) return to(Device::CPU).to(DType::F32).to_vector();
  std::vector<float> v(static_cast<size_t>(numel_));
  if (numel_ > 0) device_copy(v.data(), Device::CPU, raw(), device(), numel_ * 4);
  return v;
}

std::vector<double> Tensor::to_double_vector() const {
  if (dtype_ == DType::F32) {
    std::vector<float> f = to_vector();
    return std::vector<double>(f.begin(), f.end());
  }
  std::vector<double> v(static_cast<size_t>(numel_));
  if (numel_ > 0) device_copy(v.data(), Device::CPU, raw(), device(), numel_ * 8);
  return v;
}

double Tensor::at(int64_t i) const {
  LS_CHECK(device() == Device::CPU, "Tensor::at on a ", device_name(device()), " tensor");
  LS_CHECK(i >= 0 && i < numel_, "index ", i, " out of range ", numel_);
  return dtype_ == DType::F32 ? static_cast<double>(data<float>()[i]) : data<double>()[i];
}

// ---------------------------------------------------------------------------------------------
// CPU memory; CUDA memory comes from the CUDA backend when it is built.

#ifndef LOCKSTEP_HAVE_CUDA
bool cuda_available() { return false; }
[[noreturn]] static void no_cuda() { throw Error("this lockstep was built without the CUDA backend"); }
static void* cuda_alloc(int64_t) { no_cuda(); }
static void cuda_free(void*) {}
static void cuda_copy(void*, Device, const void*, Device, int64_t) { no_cuda(); }
#else
void* cuda_alloc(int64_t bytes);
void cuda_free(void* p);
void cuda_copy(void* dst, Device dst_dev, const void* src, Device src_dev, int64_t bytes);
#endif

void* device_alloc(Device device, int64_t bytes) {
  if (device == Device::CUDA) return cuda_alloc(bytes);
  // Blocks of 2 MiB and more (the weight, gradient and optimizer-state arenas, large batches) start on
  // a 2 MiB boundary and ask for transparent huge pages, which Debian gives only on request (madvise
  // mode): a step of the 100-layer network walks ~25 MB, more than the TLB covers in 4 KiB pages
  // (model c, 1 thread, 3 interleaved runs: batch 32 6.2-7.7k -> 7.6-7.9k, batch 256 10.0-10.4k ->
  // 10.4-11.1k samples/s; 26 MB of its arenas in huge pages).
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t align = static_cast<size_t>(bytes) >= kHuge ? kHuge : 64;
  size_t n = (static_cast<size_t>(bytes) + align - 1) / align * align;
  if (n == 0) n = 64;
  void* p = std::aligned_alloc(align, n);
  if (!p) throw Error(str_cat("out of memory allocating ", n, " bytes"));
  if (align == kHuge) (void)madvise(p, n, MADV_HUGEPAGE);  // advice only: without it, 4 KiB pages
  return p;
}

void device_free(Device device, void* p) {
  if (!p) return;
  if (device == Device::CUDA)
    cuda_free(p);
  else
    std::free(p);
}

void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, int64_t bytes) {
  if (dst_dev == Device::CPU && src_dev == Device::CPU) {
    std::memcpy(dst, src, static_cast<size_t>(bytes));
    return;
  }
  cuda_copy(dst, dst_dev, src, src_dev, bytes);
}

}  // namespace lockstep
