// A minimal stand-in for GoogleTest, enough for tests/gpu/gpu_ops_test.cpp, so the CUDA kernels can be
// validated on a machine that has nvcc and a host g++ but none of the project's Debian packages (see
// tests/gpu/standalone/run.sh). Supports TEST, TEST_F (SetUp/TearDown), EXPECT_/ASSERT_ EQ NE LT LE
// GT GE TRUE FALSE NEAR THROW NO_THROW, FAIL, GTEST_SKIP, SCOPED_TRACE (testing::Message too) and
// streamed messages.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace testing {
class Test {
 public:
  virtual ~Test() = default;
  virtual void SetUp() {}
  virtual void TearDown() {}
  virtual void TestBody() = 0;
};
// SCOPED_TRACE(testing::Message() << ...): a message built by streaming.
class Message {
 public:
  Message() = default;
  Message(const Message& o) { os_ << o.str(); }
  template <typename T> Message& operator<<(const T& v) {
    os_ << v;
    return *this;
  }
  std::string str() const { return os_.str(); }

 private:
  std::ostringstream os_;
};
inline std::ostream& operator<<(std::ostream& os, const Message& m) { return os << m.str(); }
}  // namespace testing

namespace mg {

struct State {
  bool failed = false;
  bool skipped = false;
  std::vector<std::string> traces;
};
inline State& state() {
  static State s;
  return s;
}
struct Entry {
  std::string name;
  std::function<testing::Test*()> make;
};
inline std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}
struct Registrar {
  Registrar(const char* suite, const char* name, std::function<testing::Test*()> make) {
    registry().push_back({std::string(suite) + "." + name, std::move(make)});
  }
};

template <typename T, typename = void> struct streamable : std::false_type {};
template <typename T>
struct streamable<T, std::void_t<decltype(std::declval<std::ostream&>() << std::declval<const T&>())>> : std::true_type {};
template <typename T> std::string show(const T& v) {
  if constexpr (std::is_enum_v<T>) {
    return std::to_string(static_cast<long long>(v));
  } else if constexpr (streamable<T>::value) {
    std::ostringstream os;
    os.precision(17);
    os << v;
    return os.str();
  } else {
    return "<value>";
  }
}
template <typename T> std::string str(const T& v) { return show(v); }

class Reporter {
 public:
  Reporter(const char* file, int line, std::string what) : file_(file), line_(line), what_(std::move(what)) {}
  Reporter(const Reporter&) = delete;
  ~Reporter() {
    state().failed = true;
    std::printf("%s:%d: Failure\n%s\n", file_, line_, what_.c_str());
    if (!msg_.str().empty()) std::printf("%s\n", msg_.str().c_str());
    for (const auto& t : state().traces) std::printf("  (trace: %s)\n", t.c_str());
  }
  template <typename T> Reporter& operator<<(const T& v) {
    msg_ << show(v);
    return *this;
  }

 private:
  const char* file_;
  int line_;
  std::string what_;
  std::ostringstream msg_;
};
class Skipper {
 public:
  ~Skipper() {
    state().skipped = true;
    std::printf("  skipped: %s\n", msg_.str().c_str());
  }
  template <typename T> Skipper& operator<<(const T& v) {
    msg_ << show(v);
    return *this;
  }

 private:
  std::ostringstream msg_;
};
struct Voidify {
  template <typename T> void operator=(const T&) {}
};
struct Trace {
  explicit Trace(std::string s) { state().traces.push_back(std::move(s)); }
  ~Trace() { state().traces.pop_back(); }
};

struct Result {
  bool ok;
  std::string what;
};
template <typename A, typename B, typename Op>
Result cmp(const A& a, const B& b, Op op, const char* ea, const char* eb, const char* ops) {
  if (op(a, b)) return {true, {}};
  return {false, std::string("Expected: (") + ea + ") " + ops + " (" + eb + "), actual: " + show(a) + " vs " + show(b)};
}
inline Result near(double a, double b, double tol, const char* ea, const char* eb) {
  if (std::fabs(a - b) <= tol) return {true, {}};
  return {false, std::string("The difference between ") + ea + " and " + eb + " is " + show(std::fabs(a - b)) +
                     ", which exceeds " + show(tol) + " (" + show(a) + " vs " + show(b) + ")"};
}

}  // namespace mg

#define MG_CAT2(a, b) a##b
#define MG_CAT(a, b) MG_CAT2(a, b)
#define MG_NONFATAL(res)                    \
  switch (0)                                \
  case 0:                                   \
  default:                                  \
    if (const ::mg::Result mg_r_ = (res); mg_r_.ok) \
      ;                                     \
    else                                    \
      ::mg::Reporter(__FILE__, __LINE__, mg_r_.what)
#define MG_FATAL(res)                       \
  switch (0)                                \
  case 0:                                   \
  default:                                  \
    if (const ::mg::Result mg_r_ = (res); mg_r_.ok) \
      ;                                     \
    else                                    \
      return ::mg::Voidify() = ::mg::Reporter(__FILE__, __LINE__, mg_r_.what)

#define MG_CMP(a, b, op) ::mg::cmp((a), (b), [](const auto& x, const auto& y) { return x op y; }, #a, #b, #op)
#define EXPECT_EQ(a, b) MG_NONFATAL(MG_CMP(a, b, ==))
#define EXPECT_NE(a, b) MG_NONFATAL(MG_CMP(a, b, !=))
#define EXPECT_LT(a, b) MG_NONFATAL(MG_CMP(a, b, <))
#define EXPECT_LE(a, b) MG_NONFATAL(MG_CMP(a, b, <=))
#define EXPECT_GT(a, b) MG_NONFATAL(MG_CMP(a, b, >))
#define EXPECT_GE(a, b) MG_NONFATAL(MG_CMP(a, b, >=))
#define ASSERT_EQ(a, b) MG_FATAL(MG_CMP(a, b, ==))
#define ASSERT_NE(a, b) MG_FATAL(MG_CMP(a, b, !=))
#define ASSERT_LE(a, b) MG_FATAL(MG_CMP(a, b, <=))
#define ASSERT_GT(a, b) MG_FATAL(MG_CMP(a, b, >))
#define EXPECT_TRUE(c) MG_NONFATAL((::mg::Result{bool(c), "Expected true: " #c}))
#define EXPECT_FALSE(c) MG_NONFATAL((::mg::Result{!bool(c), "Expected false: " #c}))
#define ASSERT_TRUE(c) MG_FATAL((::mg::Result{bool(c), "Expected true: " #c}))
#define ASSERT_FALSE(c) MG_FATAL((::mg::Result{!bool(c), "Expected false: " #c}))
#define EXPECT_NEAR(a, b, tol) MG_NONFATAL(::mg::near(double(a), double(b), double(tol), #a, #b))
#define EXPECT_THROW(stmt, exc)                                                                  \
  MG_NONFATAL(([&]() -> ::mg::Result {                                                           \
    try {                                                                                        \
      stmt;                                                                                      \
    } catch (const exc&) {                                                                       \
      return {true, {}};                                                                         \
    } catch (...) {                                                                              \
      return {false, "Expected " #stmt " to throw " #exc ", it threw something else"};          \
    }                                                                                            \
    return {false, "Expected " #stmt " to throw " #exc ", it threw nothing"};                  \
  }()))
#define EXPECT_NO_THROW(stmt)                                                                    \
  MG_NONFATAL(([&]() -> ::mg::Result {                                                           \
    try {                                                                                        \
      stmt;                                                                                      \
    } catch (const std::exception& e) {                                                          \
      return {false, std::string("Expected " #stmt " not to throw; it threw: ") + e.what()};    \
    } catch (...) {                                                                              \
      return {false, "Expected " #stmt " not to throw"};                                         \
    }                                                                                            \
    return {true, {}};                                                                           \
  }()))
#define FAIL() return ::mg::Voidify() = ::mg::Reporter(__FILE__, __LINE__, "Failed")
#define GTEST_SKIP() return ::mg::Voidify() = ::mg::Skipper()
#define SCOPED_TRACE(m) ::mg::Trace MG_CAT(mg_trace_, __LINE__)(::mg::str(m))

#define MG_TEST_CLASS(suite, name) MG_CAT(MG_CAT(suite, _), MG_CAT(name, _MgTest))
#define MG_DEFINE_TEST(base, suite, name)                                                            \
  class MG_TEST_CLASS(suite, name) : public base {                                                   \
   public:                                                                                           \
    void TestBody() override;                                                                        \
  };                                                                                                 \
  static ::mg::Registrar MG_CAT(MG_TEST_CLASS(suite, name), _reg)(                                  \
      #suite, #name, []() -> ::testing::Test* { return new MG_TEST_CLASS(suite, name); });          \
  void MG_TEST_CLASS(suite, name)::TestBody()
#define TEST_F(fixture, name) MG_DEFINE_TEST(fixture, fixture, name)
#define TEST(suite, name) MG_DEFINE_TEST(::testing::Test, suite, name)
